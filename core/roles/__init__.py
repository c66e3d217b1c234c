"""The LLM roles of an episode (Generator, Reflector, Curator, Reviewer, Optimizer) and their prompts."""
