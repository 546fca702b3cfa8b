/**
 * Rendering and validation of deploy/ manifests for the tests.
 *  - render(): `kubectl kustomize DIR` (kustomize is built into kubectl).
 *  - validateSchema(): the JSON Schemas of kubernetes-models (Kubernetes 1.33 API) through the
 *    model classes' validate(): types, required fields, enums, formats.
 *  - unknownFields(): those schemas accept unknown fields, but `kubectl apply` (server-side strict
 *    field validation, the default since 1.27) rejects them. The TypeScript compiler's excess
 *    property check on object literals, against kubernetes-models' interfaces, finds exactly those.
 */
import { execFileSync } from 'node:child_process'
import path from 'node:path'
import { parseAllDocuments } from 'yaml'
import ts from 'typescript'
import * as core from 'kubernetes-models/v1'
import * as apps from 'kubernetes-models/apps/v1'
import * as networking from 'kubernetes-models/networking.k8s.io/v1'

export const ROOT = path.resolve(import.meta.dirname, '../../..')

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type Obj = { apiVersion: string; kind: string; metadata: { name: string; namespace?: string; labels?: Record<string, string> }; [k: string]: any }

export function kubectlAvailable(): boolean {
  try {
    execFileSync('kubectl', ['version', '--client'], { stdio: 'ignore' })
    return true
  } catch {
    return false
  }
}

export function render(dir: string): Obj[] {
  const out = execFileSync('kubectl', ['kustomize', dir], { encoding: 'utf8', maxBuffer: 64 << 20 })
  return parseAllDocuments(out).map((d) => d.toJS() as Obj).filter(Boolean)
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
const MODELS: Record<string, { module: string; cls: { new (d: any): { validate(): void } } }> = {
  'v1/Namespace': { module: 'kubernetes-models/v1', cls: core.Namespace },
  'v1/ServiceAccount': { module: 'kubernetes-models/v1', cls: core.ServiceAccount },
  'v1/Service': { module: 'kubernetes-models/v1', cls: core.Service },
  'v1/ConfigMap': { module: 'kubernetes-models/v1', cls: core.ConfigMap },
  'v1/Secret': { module: 'kubernetes-models/v1', cls: core.Secret },
  'v1/PersistentVolumeClaim': { module: 'kubernetes-models/v1', cls: core.PersistentVolumeClaim },
  'v1/Pod': { module: 'kubernetes-models/v1', cls: core.Pod },
  'apps/v1/Deployment': { module: 'kubernetes-models/apps/v1', cls: apps.Deployment },
  'apps/v1/DaemonSet': { module: 'kubernetes-models/apps/v1', cls: apps.DaemonSet },
  'apps/v1/StatefulSet': { module: 'kubernetes-models/apps/v1', cls: apps.StatefulSet },
  'networking.k8s.io/v1/NetworkPolicy': { module: 'kubernetes-models/networking.k8s.io/v1', cls: networking.NetworkPolicy },
}

export function validateSchema(o: Obj): string | null {
  const m = MODELS[`${o.apiVersion}/${o.kind}`]
  if (!m) return `no schema for ${o.apiVersion} ${o.kind} (add it to test/deploy/lib/k8s.ts)`
  try {
    new m.cls(o).validate()
    return null
  } catch (e) {
    return (e as Error).message
  }
}

/** Unknown-field errors per object index ("[i] Kind/name: message"), via tsc's excess property check. */
export function unknownFields(objs: Obj[]): string[] {
  const file = path.join(ROOT, 'test/deploy/__manifests_check__.ts')
  const imports = new Map<string, Set<string>>()
  const lines: string[] = []
  objs.forEach((o, i) => {
    const m = MODELS[`${o.apiVersion}/${o.kind}`]
    if (!m) return
    if (!imports.has(m.module)) imports.set(m.module, new Set())
    imports.get(m.module)!.add(`I${o.kind}`)
    lines.push(`export const o${i}: I${o.kind} = ${JSON.stringify(o)};`)
  })
  const src = [...imports].map(([mod, names]) => `import type { ${[...names].join(', ')} } from '${mod}';`).join('\n') + '\n' + lines.join('\n') + '\n'
  const options: ts.CompilerOptions = {
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    strict: true,
    noEmit: true,
    skipLibCheck: true,
    types: [],
  }
  const host = ts.createCompilerHost(options)
  const orig = host.getSourceFile.bind(host)
  host.getSourceFile = (name, lang, onErr, create) => (path.resolve(name) === file ? ts.createSourceFile(name, src, lang) : orig(name, lang, onErr, create))
  const origExists = host.fileExists.bind(host)
  host.fileExists = (name) => path.resolve(name) === file || origExists(name)
  const program = ts.createProgram([file], options, host)
  const diags = ts.getPreEmitDiagnostics(program).filter((d) => d.file && path.resolve(d.file.fileName) === file)
  return diags.map((d) => {
    const { line } = d.file!.getLineAndCharacterOfPosition(d.start ?? 0)
    const text = d.file!.text.split('\n')[line] ?? ''
    const idx = Number(/^export const o(\d+)/.exec(text)?.[1] ?? -1)
    const o = objs[idx]
    const msg = ts.flattenDiagnosticMessageText(d.messageText, '\n').split('\n').slice(-1)[0]
    return `${o ? `${o.kind}/${o.metadata.name}` : '?'}: ${msg}`
  })
}

export function podSpecOf(o: Obj): Obj['spec'] | undefined {
  if (o.kind === 'Pod') return o.spec
  if (['Deployment', 'DaemonSet', 'StatefulSet', 'ReplicaSet', 'Job'].includes(o.kind)) return o.spec?.template?.spec
  return undefined
}
