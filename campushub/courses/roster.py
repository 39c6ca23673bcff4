"""The roster: a CSV file with one student a row.

Columns (a header row names them, in any order; `username` is required, the others may be empty or absent):
  username  the student's campus (and unix) user name: lowercase letters, digits, '.', '_', '-', starting
            with a letter, at most 32 characters, as the campus login makes it
  email     their address (must contain one '@' when given)
  name      their full name, for reports
  section   their section or lab group, for reports (letters, digits, '.', '_', '-')

Every problem is reported with its line number; a roster with any problem is refused as a whole.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

from . import CourseError

COLUMNS = ("username", "email", "name", "section")
USERNAME = re.compile(r"^[a-z][a-z0-9._-]{0,31}$")
SECTION = re.compile(r"^[A-Za-z0-9._-]{0,64}$")
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")


@dataclass(frozen=True)
class Student:
    username: str
    email: str = ""
    name: str = ""
    section: str = ""
    line: int = 0


def username_problem(name: str) -> str | None:
    if USERNAME.match(name):
        return None
    return (
        f"{name!r} is not a valid user name (lowercase letters, digits, '.', '_', '-', starting with a letter, "
        "at most 32 characters)"
    )


def parse_roster(text: str, source: str = "roster") -> list[Student]:
    """The students of a roster's text; a `CourseError` lists every problem with `source:line`."""
    problems: list[str] = []
    if text.startswith("\ufeff"):
        text = text[1:]  # a byte-order mark, as spreadsheets write it
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        rows = list(reader)
    except csv.Error as e:
        raise CourseError([f"{source}:{reader.line_num}: not valid CSV: {e}"]) from None
    # the line each row starts on (a quoted field may hold a newline: count them)
    lines, at = [], 1
    for row in rows:
        lines.append(at)
        at += 1 + sum(field.count("\n") for field in row)
    if not rows or not any(f.strip() for f in rows[0]):
        raise CourseError([f"{source}:1: the first line must name the columns: {','.join(COLUMNS)}"])
    header = [h.strip().lower() for h in rows[0]]
    unknown = [h for h in header if h not in COLUMNS]
    if unknown:
        problems.append(f"{source}:1: unknown column(s) {', '.join(map(repr, unknown))}: the columns are "
                        f"{', '.join(COLUMNS)}")  # fmt: skip
    twice = sorted({h for h in header if header.count(h) > 1})
    if twice:
        problems.append(f"{source}:1: column(s) named twice: {', '.join(twice)}")
    if "username" not in header:
        problems.append(f"{source}:1: no username column")
    if problems:
        raise CourseError(problems)

    students: list[Student] = []
    seen: dict[str, int] = {}
    for row, line in zip(rows[1:], lines[1:], strict=True):
        if not any(field.strip() for field in row):
            continue  # a blank line
        where = f"{source}:{line}"
        if len(row) != len(header):
            problems.append(f"{where}: {len(row)} field(s), but the header names {len(header)}")
            continue
        values = {h: v.strip() for h, v in zip(header, row, strict=True)}
        username = values["username"]
        if not username:
            problems.append(f"{where}: no username")
            continue
        if problem := username_problem(username):
            problems.append(f"{where}: {problem}")
            continue
        if username in seen:
            problems.append(f"{where}: {username} is already on line {seen[username]}")
            continue
        seen[username] = line
        email, section = values.get("email", ""), values.get("section", "")
        if email and not EMAIL.match(email):
            problems.append(f"{where}: {email!r} is not an email address")
        if not SECTION.match(section):
            problems.append(f"{where}: section {section!r}: use letters, digits, '.', '_', '-'")
        students.append(Student(username, email, values.get("name", ""), section, line))
    if problems:
        raise CourseError(problems)
    return students


def load_roster(path: Path) -> list[Student]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise CourseError([f"{path}: cannot read the roster: {e.strerror}"]) from None
    except UnicodeDecodeError:
        raise CourseError([f"{path}: the roster is not UTF-8 text (save it as CSV UTF-8)"]) from None
    return parse_roster(text, str(path))
