/** An error that is the user's (bad flags, refused input): one line on stderr and exit status 2. */
export class UsageError extends Error {}
