#!/usr/bin/env bash
# Make the three venvs the integration tests (tests/integrations/) run LiteLLM, NeMo Guardrails and garak in, each
# beside the checkout (../venv-<tool>, where the tests look by default) or under $1. Each tool gets its own venv
# because installing it next to harmlens would change harmlens's packages (LiteLLM upgrades boto3/botocore/certifi,
# NeMo Guardrails moves huggingface_hub, garak pins openai 2.x and pulls its own torch); the harmlens server keeps
# running in harmlens's python. Versions are the ones tested (docs/serving.md#integration-recipes).
#   bash examples/integrations/install_venvs.sh [DIR] [litellm|nemoguardrails|garak ...]
set -euo pipefail
here="$(cd "$(dirname "$0")/../.." && pwd)"
dir="${1:-$here/..}"
shift || true
tools=("$@")
[ ${#tools[@]} -gt 0 ] || tools=(litellm nemoguardrails garak)
declare -A spec=(
  [litellm]="litellm[proxy]==1.108.6"  # 1.110.x's [proxy] needs litellm-proxy, a package the registry did not have
  [nemoguardrails]="nemoguardrails==0.24.1"
  [garak]="garak==0.17.1"
)
for tool in "${tools[@]}"; do
  venv="$dir/venv-$tool"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q -U pip
  "$venv/bin/python" -m pip install "${spec[$tool]}"
  echo "$tool: $venv/bin/python (HARMLENS_${tool^^}_PYTHON)"
done
