/**
 * PolicyError: every problem with a policy (or a seccomp profile it names) is reported as
 * `file:line: field: what was wrong; what is allowed`, so a person can fix it without reading code.
 */
export interface PolicyErrorInit {
  file?: string
  line?: number
  field?: string
  /** what was wrong */
  problem: string
  /** what is allowed instead / what to do */
  hint?: string
}

export class PolicyError extends Error {
  readonly file?: string
  readonly line?: number
  readonly field?: string
  readonly problem: string
  readonly hint?: string
  /** Further problems found in the same pass (the first one is this error itself). */
  readonly others: PolicyError[] = []

  constructor(init: PolicyErrorInit) {
    super(PolicyError.format(init))
    this.name = 'PolicyError'
    this.file = init.file
    this.line = init.line
    this.field = init.field
    this.problem = init.problem
    this.hint = init.hint
  }

  static format(init: PolicyErrorInit): string {
    let where = ''
    if (init.file) where = init.line ? `${init.file}:${init.line}: ` : `${init.file}: `
    const field = init.field ? `${init.field}: ` : ''
    return `${where}${field}${init.problem}${init.hint ? `; ${init.hint}` : ''}`
  }

  /** All problems, one per line (this error first). */
  get report(): string {
    return [this.message, ...this.others.map((e) => e.message)].join('\n')
  }
}
