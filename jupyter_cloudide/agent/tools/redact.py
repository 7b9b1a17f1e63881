"""Removing secrets from text before it reaches the model, the logs or the ledger.

Two sources of secrets: literal values the server knows (its own token, the provider keys,
passed in by the caller) and well-known shapes of credentials (provider key prefixes, private
key blocks, ``password = "..."`` assignments). A match becomes ``[REDACTED]``.

What is deliberately *not* redacted: generic high-entropy strings - hex digests (sha256 of a
file), UUIDs, git commit ids, base64 blobs. They are everywhere in code and outputs, the model
needs them, and "looks random" is not a credential. A secret of that shape is caught only when
it is one of the literal ``secrets`` or sits in a recognisable context (``token=`` in a URL, an
assignment to a ``*_KEY``/``*password``/``*token`` name).

Every pattern is linear-time on hostile input: a pattern that begins inside a run of the
characters its body consumes is prevented by a look-behind, so each run is scanned from its
start only, and bodies are single character classes followed by a character outside them. The
private key block is found with two plain searches instead of a lazy ``.*?`` (which would be
quadratic on many BEGIN lines without an END).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

__all__ = ["MIN_SECRET_LENGTH", "REDACTED", "redact", "redactor"]

REDACTED = "[REDACTED]"
#: literal secrets shorter than this are ignored: replacing "abc" everywhere destroys text
MIN_SECRET_LENGTH = 8

_KEEP = r"\g<keep>" + REDACTED

# Names whose assigned value is a credential. The name must END with one of these (the
# assignment operator follows), so ``max_tokens``, ``tokenizer`` or ``password_hash`` are left
# alone; whatever precedes (``DB_``, ``openai_``) does not matter.
_CREDENTIAL_NAMES = (
    r"(?:password|passwd|passphrase|secret|api_?key|apikey|access_?key|secret_?key"
    r"|private_?key|auth_?token|access_?token|refresh_?token|client_?secret|token|credentials?)"
)

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # OpenAI (sk-, sk-proj-, sk-svcacct-), Anthropic (sk-ant-api03-...) and compatible servers
    (re.compile(r"(?<![A-Za-z0-9_-])sk-[A-Za-z0-9_-]{20,}"), REDACTED),
    # jupyter_cloudide's own /v1 API keys (storage.db.API_KEY_PREFIX)
    (re.compile(r"(?<![A-Za-z0-9_-])cide_[A-Za-z0-9_-]{20,}"), REDACTED),
    # AWS access key ids (long-term AKIA, temporary ASIA, and the other principal prefixes)
    (re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}(?![A-Z0-9])"),
     REDACTED),
    # AWS secret access keys: only recognisable by the name they are assigned to
    (re.compile(r"(?i)(?P<keep>aws_?secret_?access_?key[\"']?[ \t]*[:=][ \t]*[\"']?)"
                r"[A-Za-z0-9/+=]{16,}"), _KEEP),
    # GitHub personal, OAuth, app, user-to-server, refresh and fine-grained tokens
    (re.compile(r"(?<![A-Za-z0-9_])(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})"),
     REDACTED),
    # Slack bot, user, app, refresh tokens
    (re.compile(r"(?<![A-Za-z0-9-])xox[abposr]-[A-Za-z0-9-]{10,}"), REDACTED),
    # Google API keys
    (re.compile(r"(?<![A-Za-z0-9_-])AIza[0-9A-Za-z_-]{30,}"), REDACTED),
    # JSON Web Tokens: header.payload.signature, both JSON parts base64url of "{"
    (re.compile(r"(?<![A-Za-z0-9_.-])eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"),
     REDACTED),
    # Authorization headers, in HTTP dumps, curl commands, dicts and YAML
    (re.compile(r"(?i)(?P<keep>authorization[\"']?[ \t]*[:=][ \t]*[\"']?(?:bearer|token|basic)"
                r"[ \t]+)[A-Za-z0-9._~+/=-]{6,}"), _KEEP),
    # a bare "Bearer <token>" elsewhere: long and with a digit, so prose survives
    (re.compile(r"(?i)(?P<keep>\bbearer[ \t]+)(?=[A-Za-z._~+/-]*[0-9])[A-Za-z0-9._~+/-]{16,}=*"),
     _KEEP),
    # credentials in URL query strings (Jupyter's ?token=, signed URLs, API keys)
    (re.compile(r"(?i)(?P<keep>[?&](?:token|access_token|api_key|apikey|key|password|sig"
                r"|signature)=)[^&\s#\"'<>]{6,}"), _KEEP),
    # user:password@ in URLs (database URLs, git remotes)
    (re.compile(r"(?P<keep>://[^/\s:@]{1,200}:)[^/\s@]{1,200}(?=@)"), _KEEP),
    # quoted assignments in code, JSON, YAML, TOML: name = "value"
    (re.compile(r"(?i)(?P<keep>" + _CREDENTIAL_NAMES
                + r"[\"']?[ \t]*[:=][ \t]*(?P<q>[\"']))[^\"'\n]{4,}(?P=q)"),
     r"\g<keep>" + REDACTED + r"\g<q>"),
)

# Unquoted assignments at the start of a line: .env, ini, shell exports, YAML.
_UNQUOTED = re.compile(
    r"(?im)^(?P<keep>[ \t]*(?:export[ \t]+)?[A-Za-z0-9_.-]*?" + _CREDENTIAL_NAMES
    + r"[ \t]*[:=][ \t]*)(?P<value>[^\s\"'#;]{4,})"
)
#: unquoted values that are code or references, not secrets (``password = getpass()``,
#: ``token: ${{ secrets.X }}``, ``key = None``, ``api_key = settings.API_KEY``)
_NOT_A_VALUE = re.compile(
    r"[()\[\]{}$<>]|\A(?:none|null|true|false|nil|\d+)\Z|\A[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+\Z",
    re.IGNORECASE,
)

_KEY_BEGIN = re.compile(r"-----BEGIN[A-Z0-9 ]{0,40} PRIVATE KEY(?: BLOCK)?-----")
_KEY_END = re.compile(r"-----END[A-Z0-9 ]{0,40} PRIVATE KEY(?: BLOCK)?-----")


def _unquoted(match: re.Match[str]) -> str:
    value = match.group("value")
    if value == REDACTED or _NOT_A_VALUE.search(value):
        return match.group(0)
    return match.group("keep") + REDACTED


def _private_keys(text: str) -> str:
    """Replace every BEGIN ... END PRIVATE KEY block; a block without its END (cut output)
    is redacted to the end of the text - better too much than half a key."""
    if "PRIVATE KEY" not in text:
        return text
    out: list[str] = []
    position = 0
    while True:
        begin = _KEY_BEGIN.search(text, position)
        if begin is None:
            break
        out.append(text[position : begin.start()])
        out.append(REDACTED)
        end = _KEY_END.search(text, begin.end())
        if end is None:
            position = len(text)
            break
        position = end.end()
    out.append(text[position:])
    return "".join(out)


def _literals(text: str, secrets: Iterable[str]) -> str:
    # Longest first, so a secret that contains another is replaced whole.
    values = sorted({s for s in secrets if isinstance(s, str) and len(s) >= MIN_SECRET_LENGTH},
                    key=len, reverse=True)
    for value in values:
        if value in text:
            text = text.replace(value, REDACTED)
    return text


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with known secret values and credential-shaped strings replaced.

    Literal secrets go first: a pattern could otherwise rewrite part of one and leave the
    rest unmatchable.
    """
    if not text:
        return text
    text = _literals(text, secrets)
    text = _private_keys(text)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return _UNQUOTED.sub(_unquoted, text)


def redactor(secrets: Iterable[str]) -> Callable[[str], str]:
    """``redact`` bound to one set of secrets (for callers that redact many strings)."""
    frozen = tuple(secrets)
    return lambda text: redact(text, frozen)
