"""Finding the bullets that fit a task: lexical (FTS5 and in-memory BM25), vectors, and their blend."""
