// Preloaded by the harness's timeNode() (`node --import`): at exit, writes the process's CPU time
// (user + system, all threads, in ms) to fd 3, which the harness opened as a pipe.
import { writeSync } from "node:fs";

process.on("exit", () => {
  const { user, system } = process.cpuUsage();
  writeSync(3, `${(user + system) / 1000}\n`);
});
