"""CampusHub's benchmarks: outside pass/fail, they measure and print numbers into docs/.

Run them from the repository root as modules (`python -m benchmarks.spawn`): they use the test
harness in tests/cluster as an ordinary package.
"""
