"""The approval policy: may this tool call run now, must the user be asked, or is it refused?

Defaults: reads run, writes and code execution ask. Admins set per-tool modes and a cap — the
most permissive mode any write or execute tool may have (``ask`` means nothing that changes
files or runs code ever runs unasked, whatever users configure). "Always allow in this
conversation" turns a tool's ``ask`` into ``allow`` for that conversation only. Code bound for
a kernel that the risk scan flags (subprocess, deleting files, network, shell magics...) asks
every time, even when always-allowed: the point of the scan is that a model talked into
``rm -rf`` by a file it read does not get to run it silently.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

MODES = ("deny", "ask", "allow")
_RANK = {mode: i for i, mode in enumerate(MODES)}
DEFAULTS = {"read": "allow", "write": "ask", "execute": "ask"}


@dataclass(frozen=True)
class Verdict:
    mode: str
    reason: str
    #: an "ask" only a person may answer: risky code, or the administrator's cap at "ask"
    #: (a standing auto-approval, such as an API key's, does not count)
    firm: bool = False

    def unattended(self, auto_approve: bool) -> Verdict:
        """The verdict when nobody is there to ask (the ``/v1`` agent): an "ask" becomes a
        denial, or an allow when the caller pre-approved and the ask is not firm."""
        if self.mode != "ask":
            return self
        if auto_approve and not self.firm:
            return Verdict("allow", f"auto-approved by the API key ({self.reason})")
        why = "nobody can approve it over the API" if not auto_approve \
            else "it needs a person's approval even with auto-approval"
        return Verdict("deny", f"{self.reason}; {why}")


@dataclass
class ApprovalPolicy:
    per_tool: Mapping[str, str] = field(default_factory=dict)
    defaults: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULTS))
    #: the most permissive mode a write or execute tool may get
    cap: str = "allow"

    def __post_init__(self) -> None:
        for name, mode in [*self.per_tool.items(), *self.defaults.items(), ("cap", self.cap)]:
            if mode not in _RANK:
                raise ValueError(f"approval mode for {name!r}: one of {', '.join(MODES)}")

    def decide(self, tool: str, kind: str, *, always: Iterable[str] = (),
               risky_reasons: Iterable[str] = ()) -> Verdict:
        mode = self.per_tool.get(tool, self.defaults.get(kind, "ask"))
        reason = "configured for this tool" if tool in self.per_tool else f"default for {kind}"
        capped = kind != "read" and _RANK[mode] > _RANK[self.cap]
        if capped:
            mode, reason = self.cap, f"capped at {self.cap} by the administrator"
        if mode == "deny":
            return Verdict("deny", reason)
        risks = list(risky_reasons)
        if risks:
            return Verdict("ask", "risky code: " + "; ".join(risks), firm=True)
        if mode == "ask" and tool in set(always):
            return Verdict("allow", "always allowed in this conversation")
        return Verdict(mode, reason, firm=capped)
