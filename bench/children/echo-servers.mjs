// `count` echo servers (services/echo.ts) on 127.0.0.1:0 in one process, apart from the caller
// whose CPU is measured. Prints `ready {"addresses":["127.0.0.1:PORT",...]}`.
import { Server, ServerCredentials } from "@grpc/grpc-js";
import { echo } from "../../dist/services/echo.js";

const { count } = JSON.parse(process.argv[2]);
const addresses = [];
for (let i = 0; i < count; i += 1) {
  const server = new Server();
  server.addService(echo.definition, echo.implement(`echo-${i}`));
  const port = await new Promise((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (error, bound) =>
      error === null ? resolve(bound) : reject(error),
    ),
  );
  addresses.push(`127.0.0.1:${port}`);
}
process.stdout.write(`ready ${JSON.stringify({ addresses })}\n`);
process.stdin.resume();
process.stdin.on("end", () => process.exit(0));
