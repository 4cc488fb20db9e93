"""The only place that imports chromadb: the vector store, its records, and facts about a
collection read without it."""
