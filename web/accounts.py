"""Accounts: users with a role, login sessions and API tokens (the model and its service).

Who is who:
- a **user** has a unique name, a display name, one role (``admin``, ``logistics``,
  ``producer``), an argon2id password hash and can be disabled (which ends every session
  and token of theirs at once, since each request looks the user up again);
- a **session** is what a browser holds after logging in: a random 256-bit id in the
  ``origincast_session`` cookie, of which only the SHA-256 is stored (a copy of the
  table opens no session), and a CSRF token the page sends back with every write;
  it ends after ``idle_s`` without use or ``absolute_s`` after the login, whichever
  comes first;
- an **API token** is a script's credential: ``oc_`` + 256 random bits, shown once,
  stored as its SHA-256, acting with its owner's role until revoked.

Why two hashes: a password is chosen by a person and may be guessable, so it gets a slow,
memory-hard hash (argon2id, RFC 9106) that makes each guess against a stolen table cost
real memory and time. Session ids and API tokens are 256-bit random values nobody can
guess, so one SHA-256 is as strong and lets every request be checked cheaply (a slow
hash there would hand an attacker a CPU lever). Passwords are rehashed at login when
the hasher's parameters changed since they were stored.

Blocking work (the database, argon2) runs in worker threads (``asyncio.to_thread``);
argon2 takes 64 MiB per hash by default, so at most ``max_concurrent_hashes`` run at a
time and a burst of logins cannot take the machine's memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol, get_args

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

Role = Literal["admin", "logistics", "producer"]
ROLES: tuple[Role, ...] = get_args(Role)

# Lower case only: "Alice" and "alice" must not be two accounts a reader confuses.
NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.\-]{0,63}")
DISPLAY_NAME_MAX = 100
TOKEN_NAME_MAX = 100
PASSWORD_MIN = 12
# argon2 takes any length, but a megabyte "password" is a request to burn CPU.
PASSWORD_MAX = 1024
TOKEN_PREFIX = "oc_"
SECRET_BYTES = 32  # 256 bits: session ids, CSRF tokens, API tokens
# last_seen/last_used are written at most this often per session or token: one write per
# request would make every page view a database write.
TOUCH_EVERY = timedelta(seconds=60)


class AccountError(ValueError):
    """A request the accounts refuse; the message says why (shown to API callers and operators)."""


class InvalidAccount(AccountError):
    pass


class UserExists(AccountError):
    pass


class UserNotFound(AccountError):
    pass


class LastAdmin(AccountError):
    """The change would leave no enabled admin account."""


class WrongPassword(AccountError):
    pass


@dataclass(frozen=True, slots=True)
class User:
    name: str
    display_name: str | None
    role: Role
    created_at: datetime
    disabled: bool = False

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "display_name": self.display_name,
            "role": self.role,
            "created_at": _iso(self.created_at),
            "disabled": self.disabled,
        }


@dataclass(frozen=True, slots=True)
class StoredSession:
    """A session row as stored: the user it belongs to and its times."""

    user: User
    csrf_token: str
    created_at: datetime
    last_seen_at: datetime


@dataclass(frozen=True, slots=True)
class ApiToken:
    id: str
    name: str
    owner: str
    created_at: datetime
    last_used_at: datetime | None

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "owner": self.owner,
            "created_at": _iso(self.created_at),
            "last_used_at": _iso(self.last_used_at) if self.last_used_at else None,
        }


@dataclass(frozen=True, slots=True)
class UserChanges:
    """A partial update; None leaves a field as it is (``clear_display_name`` empties it)."""

    display_name: str | None = None
    clear_display_name: bool = False
    role: Role | None = None
    disabled: bool | None = None


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    idle_s: float = 12 * 3600.0
    absolute_s: float = 7 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class Login:
    """A new session: the cookie value (the only time it exists in clear) and its CSRF token."""

    session_id: str
    csrf_token: str
    user: User


@dataclass(frozen=True, slots=True)
class ActiveSession:
    user: User
    csrf_token: str
    expires_at: datetime


class AccountRepository(Protocol):
    """Persistence of users, sessions and tokens (web.accounts_sql). Synchronous: call it
    through ``asyncio.to_thread``; safe to call from several threads."""

    kind: str

    def open(self) -> None: ...

    def close(self) -> None: ...

    def migrate(self) -> list[str]: ...

    def add_user(self, user: User, password_hash: str) -> None:
        """Raises UserExists."""
        ...

    def get_user(self, name: str) -> User | None: ...

    def get_user_and_hash(self, name: str) -> tuple[User, str] | None: ...

    def list_users(self) -> list[User]: ...

    def update_user(self, name: str, changes: UserChanges) -> User:
        """Raises UserNotFound, LastAdmin. Disabling ends the user's sessions."""
        ...

    def set_password_hash(self, name: str, password_hash: str, *, end_sessions_except: str | None) -> None:
        """Replace the hash and end the user's sessions but the one whose id hash is given
        (None: all). Raises UserNotFound."""
        ...

    def replace_password_hash(self, name: str, old_hash: str, new_hash: str) -> None:
        """A rehash with new parameters: only if the stored hash is still ``old_hash``."""
        ...

    def delete_user(self, name: str) -> bool:
        """Its sessions and tokens go with it. Raises LastAdmin."""
        ...

    def add_session(self, id_hash: str, user: str, csrf_token: str, now: datetime) -> None: ...

    def get_session(self, id_hash: str) -> StoredSession | None: ...

    def touch_session(self, id_hash: str, now: datetime) -> None: ...

    def delete_session(self, id_hash: str) -> None: ...

    def purge_sessions(self, idle_before: datetime, created_before: datetime) -> int: ...

    def add_token(self, token: ApiToken, token_hash: str) -> None: ...

    def get_token(self, token_hash: str) -> tuple[User, ApiToken] | None: ...

    def touch_token(self, token_id: str, now: datetime) -> None: ...

    def list_tokens(self, owner: str | None) -> list[ApiToken]:
        """One user's tokens, or everyone's (None)."""
        ...

    def delete_token(self, token_id: str, owner: str | None) -> bool:
        """Revoke a token (only if ``owner`` owns it, unless None)."""
        ...


# -- checks ---------------------------------------------------------------------------


def check_name(name: object) -> str:
    if not isinstance(name, str) or NAME_RE.fullmatch(name) is None:
        raise InvalidAccount(
            f"user name must be 1 to 64 characters of a-z, 0-9, '_', '.', '-' (starting with a letter"
            f" or digit), got {name!r}"
        )
    return name


def check_role(role: object) -> Role:
    if role not in ROLES:
        raise InvalidAccount(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    return role


def _check_label(what: str, value: object, max_len: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidAccount(f"{what} must be text, got {value!r}")
    value = value.strip()
    if len(value) > max_len:
        raise InvalidAccount(f"{what} must be at most {max_len} characters, got {len(value)}")
    if any(ord(c) < 32 for c in value):
        raise InvalidAccount(f"{what} must not contain control characters")
    return value or None


def check_display_name(value: object) -> str | None:
    return _check_label("display_name", value, DISPLAY_NAME_MAX)


def check_token_name(value: object) -> str:
    return _check_label("token name", value, TOKEN_NAME_MAX) or "token"


def check_password(password: object) -> str:
    # The message never repeats the password.
    if not isinstance(password, str):
        raise InvalidAccount("password must be text")
    if len(password) < PASSWORD_MIN:
        raise InvalidAccount(f"password must be at least {PASSWORD_MIN} characters")
    if len(password) > PASSWORD_MAX:
        raise InvalidAccount(f"password must be at most {PASSWORD_MAX} characters")
    return password


# -- secrets --------------------------------------------------------------------------


def sha256_hex(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_secret() -> str:
    """256 random bits, URL-safe base64 (43 characters): fits a cookie and a header as is."""
    return secrets.token_urlsafe(SECRET_BYTES)


def new_api_token() -> str:
    # The prefix tells a reader (and a secret scanner) what the string is, and tells the
    # authenticator an API token from the legacy admin token without a lookup.
    return TOKEN_PREFIX + new_secret()


def password_hasher(time_cost: int = 3, memory_kib: int = 64 * 1024, parallelism: int = 4) -> PasswordHasher:
    """argon2id; the defaults are RFC 9106's second recommended profile (t=3, 64 MiB, p=4)."""
    return PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism)


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _now() -> datetime:
    return datetime.now(UTC)


class AccountService:
    """The accounts' rules over a repository; every method runs its blocking work in a thread."""

    def __init__(
        self,
        repo: AccountRepository,
        *,
        policy: SessionPolicy | None = None,
        hasher: PasswordHasher | None = None,
        max_concurrent_hashes: int = 2,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self.repo = repo
        self.policy = policy or SessionPolicy()
        self._hasher = hasher or password_hasher()
        self._hash_slots = asyncio.Semaphore(max_concurrent_hashes)
        self._clock = clock
        # A real hash to verify against when the user does not exist, so an unknown name
        # takes as long to refuse as a wrong password (no user enumeration by timing).
        self._dummy_hash: str | None = None

    # -- hashing --------------------------------------------------------------------------

    async def _hash(self, password: str) -> str:
        async with self._hash_slots:
            return await asyncio.to_thread(self._hasher.hash, password)

    async def _verify(self, stored: str, password: str) -> bool:
        def verify() -> bool:
            try:
                return self._hasher.verify(stored, password)
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                return False

        async with self._hash_slots:
            return await asyncio.to_thread(verify)

    async def _dummy(self) -> str:
        if self._dummy_hash is None:
            self._dummy_hash = await self._hash(new_secret())
        return self._dummy_hash

    # -- users ----------------------------------------------------------------------------

    async def create_user(self, name: str, role: str, password: str, display_name: str | None = None) -> User:
        user = User(
            name=check_name(name),
            display_name=check_display_name(display_name),
            role=check_role(role),
            created_at=self._clock(),
        )
        password_hash = await self._hash(check_password(password))
        await asyncio.to_thread(self.repo.add_user, user, password_hash)
        return user

    async def get_user(self, name: str) -> User | None:
        return await asyncio.to_thread(self.repo.get_user, name)

    async def list_users(self) -> list[User]:
        return await asyncio.to_thread(self.repo.list_users)

    async def update_user(self, name: str, changes: UserChanges) -> User:
        if changes.role is not None:
            check_role(changes.role)
        if changes.display_name is not None:
            changes = UserChanges(
                display_name=check_display_name(changes.display_name),
                clear_display_name=changes.clear_display_name,
                role=changes.role,
                disabled=changes.disabled,
            )
        return await asyncio.to_thread(self.repo.update_user, name, changes)

    async def delete_user(self, name: str) -> bool:
        return await asyncio.to_thread(self.repo.delete_user, name)

    async def set_password(
        self,
        name: str,
        new_password: str,
        *,
        old_password: str | None = None,
        keep_session: str | None = None,
    ) -> None:
        """Set a new password. With ``old_password`` (a user changing their own) it must be
        right. Every session of the user ends, except ``keep_session`` (the one making the
        change): whoever else held one may be the reason for the change."""
        check_password(new_password)
        if old_password is not None:
            found = await asyncio.to_thread(self.repo.get_user_and_hash, name)
            if found is None:
                raise UserNotFound(f"no user {name!r}")
            if not await self._verify(found[1], old_password):
                raise WrongPassword("the current password is wrong")
        new_hash = await self._hash(new_password)
        keep = sha256_hex(keep_session) if keep_session else None
        await asyncio.to_thread(self.repo.set_password_hash, name, new_hash, end_sessions_except=keep)

    async def verify_login(self, name: str, password: str) -> User | None:
        """The user when ``password`` is theirs and they are enabled; None otherwise (the
        same answer, and about the same time, for an unknown name)."""
        found = None
        if NAME_RE.fullmatch(name):
            found = await asyncio.to_thread(self.repo.get_user_and_hash, name)
        if found is None:
            await self._verify(await self._dummy(), password)
            return None
        user, stored = found
        if not await self._verify(stored, password) or user.disabled:
            return None
        if self._hasher.check_needs_rehash(stored):
            # Parameters were raised since this hash was made: the clear password is in
            # hand only now, at login.
            new_hash = await self._hash(password)
            await asyncio.to_thread(self.repo.replace_password_hash, name, stored, new_hash)
        return user

    # -- sessions -------------------------------------------------------------------------

    async def login(self, user: User) -> Login:
        """A new session for ``user`` (already authenticated). Expired sessions are purged
        here: logins are rare enough, and no background task is needed for it."""
        now = self._clock()
        session_id, csrf = new_secret(), new_secret()

        def store() -> None:
            self.repo.purge_sessions(
                now - timedelta(seconds=self.policy.idle_s), now - timedelta(seconds=self.policy.absolute_s)
            )
            self.repo.add_session(sha256_hex(session_id), user.name, csrf, now)

        await asyncio.to_thread(store)
        return Login(session_id, csrf, user)

    async def session(self, session_id: str) -> ActiveSession | None:
        """The session's user and CSRF token, or None (unknown, expired, user disabled)."""
        id_hash = sha256_hex(session_id)
        now = self._clock()

        def look() -> ActiveSession | None:
            s = self.repo.get_session(id_hash)
            if s is None:
                return None
            absolute_end = s.created_at + timedelta(seconds=self.policy.absolute_s)
            idle_end = s.last_seen_at + timedelta(seconds=self.policy.idle_s)
            if now >= absolute_end or now >= idle_end or s.user.disabled:
                self.repo.delete_session(id_hash)
                return None
            if now - s.last_seen_at >= TOUCH_EVERY:
                self.repo.touch_session(id_hash, now)
                idle_end = now + timedelta(seconds=self.policy.idle_s)
            return ActiveSession(s.user, s.csrf_token, min(absolute_end, idle_end))

        return await asyncio.to_thread(look)

    async def logout(self, session_id: str) -> None:
        await asyncio.to_thread(self.repo.delete_session, sha256_hex(session_id))

    # -- API tokens -----------------------------------------------------------------------

    async def create_token(self, owner: str, name: str | None) -> tuple[str, ApiToken]:
        """A new token for ``owner``; returns it in clear (the only time) and its record."""
        token = new_api_token()
        record = ApiToken(
            id=secrets.token_hex(8),
            name=check_token_name(name),
            owner=owner,
            created_at=self._clock(),
            last_used_at=None,
        )
        await asyncio.to_thread(self.repo.add_token, record, sha256_hex(token))
        return token, record

    async def token_user(self, token: str) -> tuple[User, ApiToken] | None:
        """The enabled user a token acts for, or None (unknown, revoked, user disabled)."""
        if not token.startswith(TOKEN_PREFIX):
            return None
        now = self._clock()

        def look() -> tuple[User, ApiToken] | None:
            found = self.repo.get_token(sha256_hex(token))
            if found is None or found[0].disabled:
                return None
            user, record = found
            if record.last_used_at is None or now - record.last_used_at >= TOUCH_EVERY:
                self.repo.touch_token(record.id, now)
            return user, record

        return await asyncio.to_thread(look)

    async def list_tokens(self, owner: str | None) -> list[ApiToken]:
        return await asyncio.to_thread(self.repo.list_tokens, owner)

    async def revoke_token(self, token_id: str, owner: str | None) -> bool:
        return await asyncio.to_thread(self.repo.delete_token, token_id, owner)
