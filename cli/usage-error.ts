/**
 * An error that is the user's (bad flags, refused input): one line on stderr and exit status 2.
 * Everything else a command throws (a registry or etcd that cannot be reached, a port that is
 * taken) is one line and exit status 1; see `cli/main.ts`.
 */
export class UsageError extends Error {
  override readonly name = "UsageError";
}
