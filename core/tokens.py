"""Token estimates for prompt budgets.

A heuristic (about four characters a token for English and code) rather than a
tokenizer: exact tokenizers download their vocabularies at run time, and a
budget only needs to be close and consistent.
"""


def estimate_tokens(text: str) -> int:
    return (len(text) + 3) // 4
