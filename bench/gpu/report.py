"""One machine-readable line per check (`check=NAME mix=M ok=true|false|skipped value=...`), then a summary."""

from dataclasses import dataclass, field


@dataclass
class Report:
    passed: int = 0
    failed: list[str] = field(default_factory=list)
    skipped: int = 0

    def line(self, check: str, mix: str, ok: bool | None, value: str) -> None:
        """ok None: skipped (the check needs CUDA); value still shows what the CPU path computed."""
        state = "skipped" if ok is None else str(ok).lower()
        print(f"check={check} mix={mix} ok={state} value={value}", flush=True)
        if ok is None:
            self.skipped += 1
        elif ok:
            self.passed += 1
        else:
            self.failed.append(f"{check}/{mix}")

    def error(self, check: str, mix: str, exc: BaseException) -> None:
        message = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]
        self.line(check, mix, False, f'"{message}"')

    def summary(self) -> int:
        """Prints the summary line; -> the exit code (1 when a check failed)."""
        failed = ",".join(self.failed) or "-"
        print(f"summary passed={self.passed} failed={len(self.failed)} skipped={self.skipped} failures={failed}")
        return 1 if self.failed else 0
