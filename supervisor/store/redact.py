"""Secrets never reach a log file or an API answer: bearer tokens, `hf_`/`sk-` tokens, the values of
secret-named environment variables and of secret-looking command-line flags are masked.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

REDACTED = "[REDACTED]"
# Shorter values are not masked: masking "EMPTY" or "1" wherever it appears would mangle ordinary text.
# (A secret that short is no protection anyway.)
MIN_SECRET_LENGTH = 6
_SECRET_NAME = re.compile(r"TOKEN|KEY|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
# A flag whose last word names a secret: `--api-key`, `--hf-token`; not `--tokenizer`, not `--max-num-batched-tokens`.
_SECRET_FLAG = re.compile(r"^--?(?:[A-Za-z0-9]+[-_])*(?:key|token|secret|password|passwd)$", re.IGNORECASE)
# Known token shapes, each searched only when its cheap marker is in the line (one combined regex is ten
# times slower: Python's re cannot skip ahead through an alternation). The minimum lengths spare ordinary
# words: vLLM prints `hf_overrides`, prose says "bearer of"; real HF tokens have 37 characters.
_TOKEN_SHAPES = (
    ("earer", re.compile(r"\b([Bb]earer\s+)[A-Za-z0-9\-._~+/]{6,}=*"), r"\1" + REDACTED),
    ("hf_", re.compile(r"(?<![A-Za-z0-9_])hf_[A-Za-z0-9]{20,}"), REDACTED),
    ("sk-", re.compile(r"(?<![A-Za-z0-9_])sk-[A-Za-z0-9_-]{20,}"), REDACTED),
)


def secrets_from_argv(argv: Iterable[str]) -> list[str]:
    """Values given to secret-looking flags (`--api-key X`, `--hf-token=X`): vLLM logs its arguments."""
    found = []
    args = list(argv)
    for index, arg in enumerate(args):
        flag, has_value, value = arg.partition("=")
        if _SECRET_FLAG.match(flag):
            if has_value:
                found.append(value)
            elif index + 1 < len(args):
                found.append(args[index + 1])
    return found


class Redactor:
    """Masks bearer tokens, `hf_` and `sk-` tokens, and the values of secret-named environment variables."""

    def __init__(self, env: Mapping[str, str], secrets: Iterable[str] = ()) -> None:
        values = {value for name, value in env.items() if _SECRET_NAME.search(name)}
        values.update(secrets)
        # Numbers are skipped: MAX_TOKENS=131072 is no secret, and masking it would hide every max_model_len.
        literal = sorted((v for v in values if len(v) >= MIN_SECRET_LENGTH and not v.isdigit()), key=len, reverse=True)
        self._literals = literal  # longest first: a secret containing another is masked whole

    def __call__(self, text: str) -> str:
        for marker, pattern, replacement in _TOKEN_SHAPES:
            if marker in text:
                text = pattern.sub(replacement, text)
        for secret in self._literals:  # str.replace beats a regex alternation several times over
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text
