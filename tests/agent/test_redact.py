"""redact: each credential shape and literal secrets become [REDACTED]; ordinary code, hashes
and ids survive; hostile 1 MB inputs finish quickly (bounded by pytest-timeout, not a timing
assert, so a slow CI machine does not flake)."""

from __future__ import annotations

import pytest

from jupyter_cloudide.agent.tools.redact import REDACTED, redact

# Fake credentials of the real shapes (none of them valid anywhere).
OPENAI = "sk-" + "A1b2C3d4E5f6G7h8I9j0" * 2
OPENAI_PROJECT = "sk-proj-" + "Zz9Yy8Xx7Ww6Vv5Uu4Tt3" * 3
ANTHROPIC = "sk-ant-api03-" + "Qq1Rr2Ss3Tt4Uu5Vv6Ww7" * 4 + "-AAAAAAAA"
AWS_ID = "AKIA" + "IOSFODNN7EXAMPL1"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
GITHUB = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
GITHUB_PAT = "github_pat_11ABCDEFG0" + "_abcdefghijklmnopqrstuvwxyz0123456789ABCDEF"
SLACK = "xoxb-" + "123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"
GOOGLE = "AIza" + "SyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q"
JWT = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ"
       ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c")
JUPYTER_TOKEN = "0123456789abcdef0123456789abcdef0123456789abcdef"

SHAPES: list[tuple[str, str]] = [
    (f"OPENAI_API_KEY={OPENAI}", OPENAI),
    (f"client = OpenAI(api_key='{OPENAI_PROJECT}')", OPENAI_PROJECT),
    (f"key: {ANTHROPIC}", ANTHROPIC),
    (f"aws_access_key_id = {AWS_ID}", AWS_ID),
    (f"aws_secret_access_key = {AWS_SECRET}", AWS_SECRET),
    (f'"AWS_SECRET_ACCESS_KEY": "{AWS_SECRET}"', AWS_SECRET),
    (f"git clone https://{GITHUB}@github.com/x/y", GITHUB),
    (f"token {GITHUB_PAT}", GITHUB_PAT),
    (f"SLACK={SLACK}", SLACK),
    (f"maps?key={GOOGLE}", GOOGLE),
    (f"cookie: session={JWT}", JWT),
    ("Authorization: Bearer abcDEF123.ghi-jkl_mno", "abcDEF123.ghi-jkl_mno"),
    ('headers = {"Authorization": "Bearer tok3n-value-here"}', "tok3n-value-here"),
    ("curl -H 'Authorization: token gho-like-value-99'", "gho-like-value-99"),
    ("the bearer 9f8e7d6c5b4a39281706 was rejected", "9f8e7d6c5b4a39281706"),
    (f"http://127.0.0.1:8888/lab/tree/x.ipynb?token={JUPYTER_TOKEN}", JUPYTER_TOKEN),
    (f"http://host/api?a=1&token={JUPYTER_TOKEN}&b=2", JUPYTER_TOKEN),
    ("postgresql://admin:Pa55w0rd-xyz@db.internal:5432/app", "Pa55w0rd-xyz"),
    ('password = "hunter2hunter2"', "hunter2hunter2"),
    ("DB_PASSWORD=correct-horse-battery", "correct-horse-battery"),
    ("export GITHUB_TOKEN=abc123def456", "abc123def456"),
    ("[db]\npassword = s3cr3t-ini-value", "s3cr3t-ini-value"),
    ("database:\n  password: yaml-s3cret", "yaml-s3cret"),
    ('{"api_key": "json-api-key-1"}', "json-api-key-1"),
    ("client_secret: 'oauth-client-secret'", "oauth-client-secret"),
    ("settings.SECRET_KEY = 'django-insecure-abc'", "django-insecure-abc"),
]


@pytest.mark.parametrize(("text", "secret"), SHAPES)
def test_credential_shapes_are_redacted(text: str, secret: str) -> None:
    out = redact(text)
    assert secret not in out, out
    assert REDACTED in out


def test_private_key_blocks_are_redacted_whole() -> None:
    text = ("before\n-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA7\nZZZZ\n"
            "-----END RSA PRIVATE KEY-----\nafter\n"
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk\n"
            "-----END OPENSSH PRIVATE KEY-----\n"
            "-----BEGIN PRIVATE KEY-----\ncut off here")
    out = redact(text)
    assert out == f"before\n{REDACTED}\nafter\n{REDACTED}\n{REDACTED}"


def test_public_keys_and_certificates_are_kept() -> None:
    text = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQY\n-----END PUBLIC KEY-----"
    assert redact(text) == text


def test_literal_secrets_are_redacted_longest_first() -> None:
    token = "server-token-1234567890"
    text = f"token={token} and {token}-extended and key {token}"
    out = redact(text, [token, f"{token}-extended", "short"])
    assert token not in out
    assert out.count(REDACTED) == 3
    assert redact("a short word", ["short"]) == "a short word"  # below 8: not a secret


@pytest.mark.parametrize("text", [
    "sk = 1",
    "risk-free rate: 0.03; task-manager; disk-usage",
    "max_tokens = 1000\nnum_tokens = len(tokens)\ntoken = tokenizer(text)",
    "password = getpass.getpass()",
    "password = getpass()",
    'api_key = os.environ["OPENAI_API_KEY"]',
    "api_key = settings.OPENAI_API_KEY",
    "token = None",
    "if password == user_input:",
    "password_hash = bcrypt.hashpw(pw, salt)",
    "token: ${{ secrets.GITHUB_TOKEN }}",
    # a file's sha256, a git commit id, a uuid: high entropy, but not credentials
    "sha256 = e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "commit 9fceb02d0ae598e95dc970b74767f19372d61af8",
    "run id 123e4567-e89b-12d3-a456-426614174000",
    "Bearer authentication is described in RFC 6750.",
    "See https://example.com/docs?page=2&lang=en",
    "df = pd.read_csv('data.csv'); df.head()",
])
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact(text) == text


def test_redaction_is_idempotent() -> None:
    text = "\n".join(t for t, _ in SHAPES)
    once = redact(text)
    assert redact(once) == once


HOSTILE = {
    "one long word": "a" * 1_000_000,
    "sk- repeated": "sk-" * 333_333,
    "short sk- keys": "sk-abc " * 142_857,
    "JWT starts without dots": "eyJ" * 333_333,
    "JWT segments without end": "eyJaaaaa." * 111_111,
    "password run": "password" * 125_000,
    "password= run": "password=" * 111_111,
    "unterminated quotes": "password='" * 100_000,
    "mixed quotes": "password=\"aaaa'" * 66_666,
    "scheme separators": "://" * 333_333,
    "url credentials without @": ("://" + "a" * 100 + ":" + "b" * 100) * 4_900,
    "BEGIN without END": "-----BEGIN RSA PRIVATE KEY-----" * 32_000,
    "bearer words": "Bearer " * 142_857,
    "authorization headers": "Authorization: Bearer " * 45_000,
    "aws names": "aws_secret_access_key=" * 45_000,
    "token params": "?token=" * 142_857,
    "assignment lines": "password = x\n" * 76_923,
    "spaces after a name": "password" + " " * 1_000_000,
    "AKIA run": "AKIA" * 250_000,
    "ghp_ run": "ghp_" * 250_000,
    "underscores": "_" * 1_000_000,
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_megabyte_inputs_finish(name: str) -> None:
    text = HOSTILE[name]
    out = redact(text, ["a-literal-secret"])
    assert isinstance(out, str)
