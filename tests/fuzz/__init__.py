"""Coverage-guided fuzzing (atheris) of every parser of outside bytes: see docs/fuzzing.md."""
