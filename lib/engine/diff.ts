/** A small unified line diff (LCS) for `cordon policy diff`; policy files are short. */
export function lineDiff(a: string, b: string, nameA: string, nameB: string, context = 3): string {
  if (a === b) return ''
  const x = a.split('\n')
  const y = b.split('\n')
  const n = x.length
  const m = y.length
  if (n * m > 4_000_000) return `--- ${nameA}\n+++ ${nameB}\n(files too large to diff line by line)\n`
  const L: Uint32Array[] = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1))
  for (let i = n - 1; i >= 0; i--)
    for (let j = m - 1; j >= 0; j--) L[i]![j] = x[i] === y[j] ? L[i + 1]![j + 1]! + 1 : Math.max(L[i + 1]![j]!, L[i]![j + 1]!)
  const ops: Array<{ op: ' ' | '-' | '+'; text: string; ai: number; bi: number }> = []
  let i = 0
  let j = 0
  while (i < n || j < m) {
    if (i < n && j < m && x[i] === y[j]) ops.push({ op: ' ', text: x[i]!, ai: i++, bi: j++ })
    else if (j < m && (i >= n || L[i]![j + 1]! >= L[i + 1]![j]!)) ops.push({ op: '+', text: y[j]!, ai: i, bi: j++ })
    else ops.push({ op: '-', text: x[i]!, ai: i++, bi: j })
  }
  const out = [`--- ${nameA}`, `+++ ${nameB}`]
  let k = 0
  while (k < ops.length) {
    if (ops[k]!.op === ' ') {
      k++
      continue
    }
    const start = Math.max(0, k - context)
    let end = k
    while (end < ops.length) {
      if (ops[end]!.op !== ' ') {
        end++
        continue
      }
      let run = 0
      while (end + run < ops.length && ops[end + run]!.op === ' ') run++
      if (end + run >= ops.length || run > context * 2) {
        end = Math.min(ops.length, end + context)
        break
      }
      end += run
    }
    const hunk = ops.slice(start, end)
    const aStart = hunk[0]!.ai + 1
    const bStart = hunk[0]!.bi + 1
    const aLen = hunk.filter((o) => o.op !== '+').length
    const bLen = hunk.filter((o) => o.op !== '-').length
    out.push(`@@ -${aStart},${aLen} +${bStart},${bLen} @@`)
    for (const o of hunk) out.push(o.op + o.text)
    k = end
  }
  return out.join('\n') + '\n'
}
