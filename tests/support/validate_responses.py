# Validates real responses against an OpenAPI 3.1 document's response schemas (jsonschema,
# Draft 2020-12, installed with openapi-spec-validator). stdin: {"doc": ..., "cases": [{"path",
# "method", "status", "body"}]}. Prints one line per case; exit 1 if any body does not match.
import json
import sys

from jsonschema import Draft202012Validator

payload = json.load(sys.stdin)
doc = payload["doc"]
bad = 0
for case in payload["cases"]:
    op = doc["paths"][case["path"]][case["method"]]
    schema = op["responses"][str(case["status"])]["content"]["application/json"]["schema"]
    # refs are "#/components/schemas/X": resolve them against a root that carries the components
    root = dict(schema, components=doc["components"])
    errors = sorted(Draft202012Validator(root).iter_errors(case["body"]), key=lambda e: list(e.path))
    name = f'{case["method"].upper()} {case["path"]} {case["status"]}'
    if errors:
        bad += 1
        print(f"FAIL {name}: " + "; ".join(f'{list(e.path)}: {e.message}' for e in errors[:5]))
    else:
        print(f"ok   {name}")
sys.exit(1 if bad else 0)
