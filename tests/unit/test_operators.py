"""Operators, roles and credentials without I/O (engine/operators.py): what each role may do, the name,
note and password rules, the token and password hashing."""

from __future__ import annotations

import pytest

from engine.errors import EngineError, Forbidden, InvalidRequest, RemoteForbidden, ServiceError
from engine.operators import (
    MAX_NOTE_LENGTH,
    OPERATOR_KEY,
    ROLE_PERMISSIONS,
    SHARED_TOKEN_OPERATOR,
    TOKEN_PREFIX,
    Operator,
    Permission,
    Role,
    check_attribution,
    check_name,
    check_note,
    check_password,
    check_role,
    hash_password,
    new_secret,
    new_token,
    token_hash,
    verify_password,
)

P = Permission


class TestRoles:
    def test_each_role_holds_exactly_its_permissions(self) -> None:
        """The table of the README: viewer reads; submitter submits and cancels; approver cancels,
        resolves and approves but never submits; admin does everything."""
        assert {
            Role.VIEWER: {P.VIEW},
            Role.SUBMITTER: {P.VIEW, P.SUBMIT, P.CANCEL},
            Role.APPROVER: {P.VIEW, P.CANCEL, P.RESOLVE, P.APPROVE},
            Role.ADMIN: set(P),
        } == ROLE_PERMISSIONS

    def test_operator_can_asks_its_role(self) -> None:
        """``can`` answers from the role's set; every role may view."""
        assert all(Operator("x", role).can(P.VIEW) for role in Role)
        assert not Operator("v", Role.VIEWER).can(P.CANCEL)
        assert Operator("a", Role.APPROVER).can(P.APPROVE) and not Operator("a", Role.APPROVER).can(P.SUBMIT)

    def test_the_shared_token_is_a_named_admin(self) -> None:
        """The deprecated single token acts as the admin ``shared-token`` (a valid operator name)."""
        assert Operator("shared-token", Role.ADMIN) == SHARED_TOKEN_OPERATOR
        assert check_name(SHARED_TOKEN_OPERATOR.name) == "shared-token"
        assert "operator" in repr(OPERATOR_KEY)

    def test_roles_are_checked_by_name(self) -> None:
        """A role by its value; an unknown one names the valid ones."""
        assert check_role("approver") is Role.APPROVER
        with pytest.raises(InvalidRequest, match="viewer, submitter, approver, admin") as exc:
            check_role("root")
        assert exc.value.field == "role"


class TestNamesAndNotes:
    @pytest.mark.parametrize("name", ["alice", "a", "ops.team-1_b", "x" * 64])
    def test_valid_names(self, name: str) -> None:
        """1-64 of a-z 0-9 . _ -."""
        assert check_name(name) == name

    @pytest.mark.parametrize("name", ["", "Alice", "a b", "x" * 65, "é", "a/b", 7, None])
    def test_invalid_names(self, name: object) -> None:
        """Anything else is an InvalidRequest on ``name``."""
        with pytest.raises(InvalidRequest) as exc:
            check_name(name)
        assert exc.value.field == "name"

    def test_notes_are_stripped_bounded_text(self) -> None:
        """None stays None; text is stripped; blank, too long, non-text or control characters are refused."""
        assert check_note(None) is None
        assert check_note("  checked with the desk\n  ") == "checked with the desk"
        assert check_note("line one\nline two\ttab") == "line one\nline two\ttab"
        assert check_note("x" * MAX_NOTE_LENGTH) == "x" * MAX_NOTE_LENGTH
        for bad in ("", "   ", "x" * (MAX_NOTE_LENGTH + 1), "bell\x07", "del\x7f", 12):
            with pytest.raises(InvalidRequest) as exc:
                check_note(bad)
            assert exc.value.field == "note"

    def test_attribution_checks_both(self) -> None:
        """Operator name and note together; either may be absent."""
        assert check_attribution(None, None) == (None, None)
        assert check_attribution("bob", " why ") == ("bob", "why")
        with pytest.raises(InvalidRequest):
            check_attribution("Bob", None)


class TestCredentials:
    def test_tokens_are_prefixed_random_and_hashed(self) -> None:
        """``uwo_`` + 43 url-safe characters; distinct each time; the hash is SHA-256 hex, not the token."""
        tokens = {new_token() for _ in range(50)}
        assert len(tokens) == 50
        token = tokens.pop()
        assert token.startswith(TOKEN_PREFIX) and len(token) == len(TOKEN_PREFIX) + 43
        digest = token_hash(token)
        assert len(digest) == 64 and token not in digest and token_hash(token) == digest
        assert new_secret() != new_secret()

    def test_passwords_need_twelve_characters(self) -> None:
        """Shorter ones (or non-text) are refused on ``password``."""
        assert check_password("twelve chars") == "twelve chars"
        for bad in ("eleven char", "", None):
            with pytest.raises(InvalidRequest, match="at least 12") as exc:
                check_password(bad)
            assert exc.value.field == "password"

    def test_password_hashes_are_salted_scrypt_with_parameters(self) -> None:
        """Two hashes of one password differ (salt); each verifies; a wrong password, a mangled or a
        foreign hash does not."""
        one, two = hash_password("correct horse battery"), hash_password("correct horse battery")
        assert one != two and one.startswith("scrypt$16384$8$1$") and "correct" not in one
        assert verify_password("correct horse battery", one) and verify_password("correct horse battery", two)
        assert not verify_password("correct horse batterY", one)
        assert not verify_password("correct horse battery", None)
        assert not verify_password("correct horse battery", "scrypt$1$2")
        assert not verify_password("correct horse battery", "bcrypt$" + one.split("$", 1)[1])
        assert not verify_password("correct horse battery", one[:-2] + "zz")


class TestErrors:
    def test_forbidden_is_an_engine_error_and_remote_forbidden_both(self) -> None:
        """The client's 403 class is a ServiceError and a Forbidden, like the other Remote classes."""
        assert issubclass(Forbidden, EngineError)
        remote = RemoteForbidden("viewer may not cancel", status=403, name="forbidden")
        assert isinstance(remote, ServiceError) and isinstance(remote, Forbidden) and remote.status == 403
        assert "role does not allow" in Forbidden().message
