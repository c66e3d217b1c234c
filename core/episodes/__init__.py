"""An episode from task to learned delta: the loop, its trace, the review workflow, learning from agents."""
