"""Semester courses: a manifest and a roster become hub users, groups, a scoped staff role, profile
grants and shared folders (`campushub course plan | apply | retire`).

Every refusal is a `CourseError` carrying one line per problem, each meant for a person."""

from __future__ import annotations


class CourseError(Exception):
    """A course that cannot be planned, applied or retired; `problems` holds one line per error."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))
