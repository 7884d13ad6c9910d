"""A/B testing: deterministic assignment, analysis with guardrails, power, simulation."""
