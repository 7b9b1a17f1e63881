"""Agent layer: conversations now; model routing, prompts, tools and approvals later."""
