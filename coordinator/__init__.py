"""The coordinator: leader election, the pure assignment algorithm, and the assignment writer."""
