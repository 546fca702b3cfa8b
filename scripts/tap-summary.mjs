#!/usr/bin/env node
/**
 * A tap reporter (tap runs it with the raw TAP stream on stdin): prints each test file's result,
 * the name and diagnostics of every failure, every skip with its reason, and ends with the line
 * `N passed, N failed, N skipped`, where N counts leaf assertions (not subtest containers).
 * The full raw TAP goes to $CORDON_TAP_LOG (default .tap/raw.tap) for a reader who wants it all.
 * Written by hand because tap's own reporters print totals of files, not the closing line CI reads.
 */
import { createInterface } from 'node:readline'
import { createWriteStream, mkdirSync } from 'node:fs'
import { dirname } from 'node:path'

const logPath = process.env.CORDON_TAP_LOG || '.tap/raw.tap'
mkdirSync(dirname(logPath), { recursive: true })
const raw = createWriteStream(logPath)

let passed = 0, failed = 0, skipped = 0, todo = 0
let prevIndent = -1
let inYaml = false, yamlIndent = 0
let lastFailure = null
let failsInFile = 0
const subtestStack = [] // names by depth
const rl = createInterface({ input: process.stdin })

const indentOf = (l) => l.length - l.trimStart().length

rl.on('line', (line) => {
  raw.write(line + '\n')
  if (line.trim() === '') return
  const ind = indentOf(line)
  const t = line.trim()
  if (inYaml) {
    if (t === '...' && ind === yamlIndent) {
      inYaml = false
      if (lastFailure) {
        // the failure's diagnostics (message, diff, where), capped so a huge diff cannot flood CI's log
        const shown = lastFailure.slice(0, 80)
        for (const l of shown) process.stdout.write(`    | ${l.slice(yamlIndent)}\n`)
        if (lastFailure.length > shown.length) process.stdout.write(`    | ... ${lastFailure.length - shown.length} more lines in the raw TAP\n`)
        lastFailure = null
      }
    } else if (lastFailure) lastFailure.push(line)
    return
  }
  if (t === '---') {
    inYaml = true; yamlIndent = ind
    return
  }
  const sub = /^# Subtest: (.*)$/.exec(t)
  if (sub) { subtestStack[ind / 4] = sub[1]; subtestStack.length = ind / 4 + 1; prevIndent = ind; return }
  const m = /^(not ok|ok) \d+(?: - )?(.*?)(?: # (SKIP|TODO)\b ?(.*))?$/i.exec(t)
  if (m) {
    const container = prevIndent > ind
    const ok = m[1] === 'ok'
    const directive = (m[3] || '').toUpperCase()
    const path = [...subtestStack.slice(0, ind / 4), m[2]].filter(Boolean).join(' > ')
    if (ind === 0) process.stdout.write(`${ok ? 'ok    ' : 'FAILED'} ${m[2]}\n`)
    if (directive === 'SKIP') {
      skipped++
      process.stdout.write(`  skip: ${path}: ${m[4] || '(no reason given)'}\n`)
    } else if (directive === 'TODO') {
      todo++
    } else if (!container) {
      if (ok) passed++
      else { failed++; failsInFile++; lastFailure = []; process.stdout.write(`  not ok: ${path}\n`) }
    } else if (!ok && ind === 0 && failsInFile === 0) {
      // a file that failed without a failing leaf (crash, timeout, plan mismatch)
      failed++
      process.stdout.write(`  not ok: ${m[2]} (the file itself failed: crash, timeout or bad plan; see the raw TAP)\n`)
    }
    if (ind === 0) failsInFile = 0
    if (ok) lastFailure = null
    prevIndent = ind
    return
  }
  if (/^Bail out!/.test(t)) { failed++; process.stdout.write(`  ${t}\n`) }
  prevIndent = ind
})

rl.on('close', () => {
  raw.end()
  process.stdout.write(`\nfull TAP output: ${logPath}\n`)
  process.stdout.write(`${passed} passed, ${failed} failed, ${skipped} skipped${todo ? `, ${todo} todo` : ''}\n`)
  process.exitCode = failed > 0 ? 1 : 0
})
