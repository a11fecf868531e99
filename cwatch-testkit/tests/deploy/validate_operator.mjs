// Validates Prometheus-operator objects (ServiceMonitor, PodMonitor) against
// the operator's CRD schemas bundled in @kubernetes-models/prometheus-operator
// (offline). Usage: node validate_operator.mjs FILE.yaml; exit 1 if invalid.
// Must sit next to the node_modules it imports from (the test copies it).
import * as yaml from 'js-yaml';
import fs from 'fs';
import { ServiceMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor';
import { PodMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor';

const kinds = { ServiceMonitor, PodMonitor };
let failed = false;
for (const doc of yaml.loadAll(fs.readFileSync(process.argv[2], 'utf8'))) {
  if (!doc) continue;
  const Kind = kinds[doc.kind];
  if (!Kind || doc.apiVersion !== 'monitoring.coreos.com/v1') {
    console.log(`invalid: no operator schema for ${doc.apiVersion} ${doc.kind}`);
    failed = true;
    continue;
  }
  try {
    new Kind(doc).validate();
    console.log(`valid: ${doc.kind} ${doc.metadata.namespace}/${doc.metadata.name}`);
  } catch (e) {
    console.log(`invalid: ${doc.kind} ${doc.metadata && doc.metadata.name}: ${e.message}`);
    failed = true;
  }
}
process.exit(failed ? 1 : 0);
