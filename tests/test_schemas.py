from pathlib import Path

from ftstore.schemas import DOCUMENTS, render

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"


def test_checked_in_schemas_match_the_code():
    for name, struct in DOCUMENTS.items():
        path = SCHEMAS / name
        assert path.exists(), f"{name} missing: run python -m ftstore.schemas"
        assert path.read_text() == render(struct), f"{name} is stale: run python -m ftstore.schemas"
    assert sorted(p.name for p in SCHEMAS.glob("*.json")) == sorted(DOCUMENTS)
