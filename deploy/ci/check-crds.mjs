// Validates Prometheus Operator custom resources against the operator's CRD schemas,
// as compiled by @kubernetes-models/prometheus-operator (npm, pinned in package.json).
// Input on stdin: a JSON array of objects. Output on stdout: a JSON array, per object
// null (valid) or the first schema error. Used by check-k8s.py.
//
// Limit: the CRD schemas do not forbid unknown fields, so a misspelt optional field
// passes here (the API server's strict field validation would reject it).
import { readFileSync } from "node:fs";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";
import { PodMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor";

const models = { ServiceMonitor, PrometheusRule, PodMonitor };
const docs = JSON.parse(readFileSync(0, "utf8"));
const results = docs.map((doc) => {
  const Model = doc.apiVersion === "monitoring.coreos.com/v1" ? models[doc.kind] : undefined;
  if (!Model) return `no schema for ${doc.apiVersion} ${doc.kind}`;
  try {
    new Model(doc).validate();
    return null;
  } catch (e) {
    return String(e.message ?? e).split("\n")[0];
  }
});
process.stdout.write(JSON.stringify(results) + "\n");
