"""The shared cache: Redis for every worker of every host (redis.py), or one process's memory (memory.py), behind one contract.

Per scope (the shared credential, one user's, or either "capped" past the egress ceiling):

- ``snapshot()`` reads, in one round trip, the scope's one record (a credential whatever its
  window, or a revocation's tombstone), the upstream cool-down left and the failure count. A record
  that does not parse, or a key of another Redis type, is a miss, never an error. The record
  expires with its credential; callers still check validity (clocks drift).
- ``get()`` returns the record's credential, or None.
- ``put(credential)`` stores it unless the record was issued later (a late writer never replaces a
  newer credential; a shorter grant issued later does replace an older, longer one) or is the
  tombstone of one issued as late (a revoked one is never put back), in one atomic step; it tells
  whether it did.
- ``revoke(credential)`` leaves a tombstone in its place, unless a credential issued later is there already.
- ``acquire_lock(ttl)`` returns a token or None; the lock expires by itself, so that a dead holder
  cannot block the fleet; ``release_lock(token)`` deletes it only if the token still owns it.
- ``start_cooldown(seconds)`` and ``clear_failures()``: one cool-down for every scope, since the
  upstream fails for everyone at once.
- ``admit_user(bound, life)`` counts one more user with a record of their own unless ``bound``
  were admitted within ``life`` seconds (a record lives no longer than its credential, so that
  many at most are alive): what keeps per-user state within a documented memory.
- ``read``, ``write`` and ``claim`` keep small named values beside (the fleet's TURN usage reading,
  and who asks for the next one).
- ``scoped(scope)`` returns the same contract for another scope. Any I/O failure raises
  ``StoreUnavailable``; nothing else leaves these methods.
"""
