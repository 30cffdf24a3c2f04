"""Push an export to the Hugging Face Hub as one commit (`python -m trainer.export --push-to-hub`).

    push_export(Path("runs/demo/export/DistilBioBERT"), "me/DistilBioBERT")

huggingface_hub's HfApi: `create_repo(exist_ok=True)`, then `create_commit` with every file of the
export, its README.md's usage snippet naming the Hub id instead of the local directory (the export
itself is left as it is). The token is huggingface_hub's: `hf auth login` or HF_TOKEN. Any failure
of the network or the Hub (offline, no token, no permission) is one HubError line.
"""

from __future__ import annotations

from pathlib import Path

from trainer.export.model_card import with_model_id

CARD = "README.md"


class HubError(Exception):
    """A push that did not happen, in one line."""


def export_files(export_dir: Path) -> list[Path]:
    """What an export holds (the files `write_export` wrote), in a stable order."""
    return sorted(p for p in export_dir.rglob("*") if p.is_file())


def push_export(export_dir: Path, repo_id: str, *, private: bool = False, api=None) -> str:
    """Create `repo_id` if needed and commit the export to it; returns the commit's URL."""
    from huggingface_hub import CommitOperationAdd, HfApi

    export_dir = Path(export_dir)
    if not (export_dir / "config.json").is_file() or not (export_dir / CARD).is_file():
        raise HubError(f"{export_dir}: not an export (no config.json and {CARD})")
    card = with_model_id((export_dir / CARD).read_text(encoding="utf-8"), repo_id)
    operations = [
        CommitOperationAdd(path_in_repo=p.relative_to(export_dir).as_posix(), path_or_fileobj=p)
        for p in export_files(export_dir)
        if p.relative_to(export_dir).as_posix() != CARD
    ]
    operations.append(CommitOperationAdd(path_in_repo=CARD, path_or_fileobj=card.encode()))
    api = api if api is not None else HfApi()
    message = f"biodistill export {export_dir.parent.name}/{export_dir.name}"
    # NOTE: only the two calls that talk to the Hub are caught: whatever they raise (offline, no
    # token, 401/403, a transport error of the HTTP client) is the Hub's answer, not our bug
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        info = api.create_commit(
            repo_id, operations=operations, commit_message=message, repo_type="model"
        )
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise HubError(
            f"pushing {export_dir} to the Hub as {repo_id} failed: {type(e).__name__}: {first}"
        ) from None
    return getattr(info, "commit_url", None) or f"https://huggingface.co/{repo_id}"
