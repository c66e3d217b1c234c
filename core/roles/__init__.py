"""The LLM roles of an episode (Generator, Reflector, Curator, Reviewer, Optimizer) and their prompts.

`schemas` holds what they answer and see, `protocols` what the loop needs of each,
`llm_roles` the model-backed implementations.
"""

from core.roles.llm_roles import LLMCurator, LLMGenerator, LLMOptimizer, LLMReflector, LLMReviewer
from core.roles.protocols import Curator, Generator, Optimizer, Reflector, Reviewer
from core.roles.schemas import (
    Attempt,
    BulletTag,
    CuratorOutput,
    GeneratorOutput,
    OptimizerOutput,
    ReflectorOutput,
    ReviewerOutput,
    clip,
)

__all__ = [
    "Attempt", "BulletTag", "Curator", "CuratorOutput", "Generator", "GeneratorOutput", "LLMCurator", "LLMGenerator",
    "LLMOptimizer", "LLMReflector", "LLMReviewer", "Optimizer", "OptimizerOutput", "Reflector", "ReflectorOutput",
    "Reviewer", "ReviewerOutput", "clip",
]
