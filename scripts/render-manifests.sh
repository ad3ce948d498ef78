#!/usr/bin/env bash
# Renders the Helm chart (deploy/helm/palisade) with its default values into the plain
# manifests deploy/manifests/palisade.yaml (namespace palisade-system, the Namespace and
# the CRDs included), for `kubectl apply -f` without Helm. Run it after changing the
# chart: a test (palisade-deploy, manifests_are_the_chart_rendered) checks they agree.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
helm=$(bash "$here/scripts/helm-binary.sh")
mkdir -p "$here/deploy/manifests"
"$helm" template palisade "$here/deploy/helm/palisade" \
  --namespace palisade-system --include-crds --set createNamespace=true \
  > "$here/deploy/manifests/palisade.yaml"
echo "$here/deploy/manifests/palisade.yaml"
