import { readFile } from "node:fs/promises";
import type { HttpAnswer, HttpRoutes } from "../../client/server/http-endpoints.js";
import type { ConsoleFeed } from "./console-feed.js";

/** The page's files, shipped next to this module (`npm run build` copies `ui/` into `dist/`). */
const FILES: Readonly<Record<string, { file: string; contentType: string }>> = {
  "/ui": { file: "index.html", contentType: "text/html; charset=utf-8" },
  "/ui/app.mjs": { file: "app.mjs", contentType: "text/javascript; charset=utf-8" },
  "/ui/app.css": { file: "app.css", contentType: "text/css; charset=utf-8" },
};

/**
 * The web console's routes on the admin port: `/ui` (the page), its module and style sheet, and
 * `/ui/events` (the feed's server-sent events). Plain files, no build step: read once, then kept.
 */
export function consoleRoutes(feed: ConsoleFeed): HttpRoutes {
  const cache = new Map<string, Promise<string>>();
  const serve = (path: string, file: string, contentType: string) => async (): Promise<HttpAnswer> => {
    let body = cache.get(path);
    if (body === undefined) {
      body = readFile(new URL(`./ui/${file}`, import.meta.url), "utf8");
      cache.set(path, body);
      body.catch(() => cache.delete(path)); // retry a failed read on the next request
    }
    return { status: 200, contentType, body: await body };
  };
  return {
    ...Object.fromEntries(
      Object.entries(FILES).map(([path, { file, contentType }]) => [path, serve(path, file, contentType)]),
    ),
    "/ui/events": feed.route,
  };
}
