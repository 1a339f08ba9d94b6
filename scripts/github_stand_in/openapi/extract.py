"""Cut GitHub's OpenAPI description down to the operations the stand-in serves.

The full description is ~13 MB; the stand-in's tests need the operations below and the
components they reference (schemas, responses, parameters, headers), without prose or examples.

Source: the npm package @octokit/openapi, whose generated/api.github.com.json is GitHub's
github/rest-api-description for api.github.com (REST API version 2022-11-28) plus x-octokit
annotations. Regenerate with:

    npm pack @octokit/openapi@23.0.2 && tar xzf octokit-openapi-23.0.2.tgz
    .venv/bin/python -m scripts.github_stand_in.openapi.extract \\
        package/generated/api.github.com.json scripts/github_stand_in/openapi/github-subset.json
"""

import json
import sys
from pathlib import Path
from typing import Any

# (method, path) of every operation the stand-in serves; its operationId is kept beside it.
OPERATIONS = [
    ("get", "/app"),
    ("post", "/app/installations/{installation_id}/access_tokens"),
    ("get", "/repos/{owner}/{repo}"),
    ("get", "/repos/{owner}/{repo}/git/ref/{ref}"),
    ("post", "/repos/{owner}/{repo}/git/refs"),
    ("patch", "/repos/{owner}/{repo}/git/refs/{ref}"),
    ("delete", "/repos/{owner}/{repo}/git/refs/{ref}"),
    ("get", "/repos/{owner}/{repo}/pulls"),
    ("post", "/repos/{owner}/{repo}/pulls"),
    ("get", "/repos/{owner}/{repo}/pulls/{pull_number}"),
    ("patch", "/repos/{owner}/{repo}/pulls/{pull_number}"),
    ("get", "/repos/{owner}/{repo}/pulls/{pull_number}/merge"),
    ("put", "/repos/{owner}/{repo}/pulls/{pull_number}/merge"),
    ("get", "/repos/{owner}/{repo}/commits/{ref}/check-runs"),
    ("get", "/repos/{owner}/{repo}/commits/{ref}/status"),
    ("get", "/repos/{owner}/{repo}/commits/{ref}/statuses"),
    ("post", "/repos/{owner}/{repo}/statuses/{sha}"),
    ("get", "/repos/{owner}/{repo}/deployments"),
    ("post", "/repos/{owner}/{repo}/deployments"),
    ("get", "/repos/{owner}/{repo}/deployments/{deployment_id}"),
    ("get", "/repos/{owner}/{repo}/deployments/{deployment_id}/statuses"),
    ("post", "/repos/{owner}/{repo}/deployments/{deployment_id}/statuses"),
]
PROSE = {"description", "summary", "examples", "example", "externalDocs", "x-github", "x-octokit"}


def strip(node: Any, *, in_properties: bool = False) -> Any:
    """Drop prose and examples (but not a property that happens to be named `description`)."""
    if isinstance(node, list):
        return [strip(item) for item in node]
    if not isinstance(node, dict):
        return node
    return {
        key: strip(value, in_properties=key == "properties")
        for key, value in node.items()
        if in_properties or key not in PROSE
    }


def references(node: Any) -> set[str]:
    if isinstance(node, list):
        return set().union(*(references(item) for item in node)) if node else set()
    if not isinstance(node, dict):
        return set()
    found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
    return found.union(*(references(value) for value in node.values()))


def lookup(document: dict[str, Any], pointer: str) -> Any:
    node: Any = document
    for part in pointer.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def extract(document: dict[str, Any]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for method, path in OPERATIONS:
        operation = document["paths"][path][method]
        paths.setdefault(path, {})[method] = strip(
            {
                k: operation[k]
                for k in ("operationId", "parameters", "requestBody", "responses")
                if k in operation
            }
        )
    components: dict[str, dict[str, Any]] = {}
    pending = references(paths)
    seen: set[str] = set()
    while pending:
        pointer = pending.pop()
        if pointer in seen:
            continue
        seen.add(pointer)
        _, kind, name = pointer.removeprefix("#/").split("/", 2)
        value = strip(lookup(document, pointer))
        components.setdefault(kind, {})[name] = value
        pending |= references(value)
    return {
        "openapi": document["openapi"],
        "info": {
            "title": "GitHub REST API, the operations the GitHub stand-in serves",
            "version": "2022-11-28",
            "x-source": "npm @octokit/openapi "
            + document["info"]["version"]
            + " generated/api.github.com.json (github/rest-api-description, api.github.com)",
        },
        "paths": paths,
        "components": {
            kind: dict(sorted(items.items())) for kind, items in sorted(components.items())
        },
    }


def main() -> None:
    source, target = Path(sys.argv[1]), Path(sys.argv[2])
    subset = extract(json.loads(source.read_text()))
    target.write_text(json.dumps(subset, indent=1, sort_keys=False) + "\n")
    print(f"{target}: {target.stat().st_size // 1024} KiB, {len(OPERATIONS)} operations")


if __name__ == "__main__":
    main()
