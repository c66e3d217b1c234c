"""The LLM roles of an episode (Generator, Reflector, Curator, Reviewer, Optimizer) and their prompts.

`schemas` holds what they answer and see, `protocols` what the loop needs of each, `llm_roles` the
model-backed implementations. For weak models: `wire` is the tight JSON schema each answer is asked
in, `replies` (on `parsing`) reads a raw reply leniently, `budget` keeps every prompt within its cap.
"""

from core.roles.llm_roles import LLMCurator, LLMGenerator, LLMOptimizer, LLMReflector, LLMReviewer, LLMRole
from core.roles.protocols import Curator, Generator, Optimizer, Reflector, Reviewer
from core.roles.schemas import (
    Attempt,
    BulletTag,
    CodeOutput,
    CuratorOutput,
    GeneratorOutput,
    OptimizerOutput,
    ReflectorOutput,
    ReviewerOutput,
    RoleOutput,
    clip,
)

__all__ = [
    "Attempt", "BulletTag", "CodeOutput", "Curator", "CuratorOutput", "Generator", "GeneratorOutput", "LLMCurator",
    "LLMGenerator", "LLMOptimizer", "LLMReflector", "LLMReviewer", "LLMRole", "Optimizer", "OptimizerOutput",
    "Reflector", "ReflectorOutput", "Reviewer", "ReviewerOutput", "RoleOutput", "clip",
]
