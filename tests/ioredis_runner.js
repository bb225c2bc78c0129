// Runs command sequences through ioredis, for tests/test_ioredis.py.
//
//   node ioredis_runner.js cluster|single HOST:PORT [HOST:PORT ...]
//
// cluster: an ioredis Cluster started from those nodes (it learns the others from
// CLUSTER SLOTS); single: a plain ioredis Redis on the first. Reads one JSON line per
// sequence on stdin, a list of commands, each a list of base64 arguments; writes one
// JSON line with a reply per command: {"b": base64} for a string, a number, null, a
// list, or {"err": message}; {"client": why} for a command the Cluster client cannot
// route (a key it needs is missing: it never reaches a server). Replies come from
// callBuffer, so the bytes are Redis's.
// A line "quit" ends it.
"use strict";

const path = require("path");
const readline = require("readline");
const modules = process.env.IOREDIS_DIR || path.join(__dirname, "..", ".node", "node_modules");
const Redis = require(path.join(modules, "ioredis"));
const commands = require(path.join(modules, "@ioredis", "commands"));

const [mode, ...addresses] = process.argv.slice(2);
const nodes = addresses.map((address) => {
  const at = address.lastIndexOf(":");
  return { host: address.slice(0, at), port: Number(address.slice(at + 1)) };
});

// One master answers every slot (dyno's CLUSTER SLOTS): no refresh while a test runs,
// so that every command goes to the node the first answer named.
const client = mode === "cluster"
  ? new Redis.Cluster(nodes, { slotsRefreshInterval: 3600000, enableReadyCheck: true,
    redisOptions: { maxRetriesPerRequest: 0 } })
  : new Redis({ ...nodes[0], maxRetriesPerRequest: 0 });

function encode(reply) {
  if (reply === null || reply === undefined) return null;
  if (Buffer.isBuffer(reply)) return { b: reply.toString("base64") };
  if (typeof reply === "number") return reply;
  if (Array.isArray(reply)) return reply.map(encode);
  if (typeof reply === "string") return { b: Buffer.from(reply).toString("base64") };
  return { other: String(reply) };
}

// Why the Cluster client cannot route a command (it needs a key the command lacks,
// so it never reaches a server), or null.
function unroutable(name, args) {
  if (mode !== "cluster" || !commands.exists(name.toLowerCase())) return null;
  try {
    const positions = commands.getKeyIndexes(name.toLowerCase(), args);
    return positions.some((at) => at >= args.length) ? "a key is missing" : null;
  } catch (error) {
    return String(error.message);
  }
}

function within(promise, ms) {
  let timer;
  const late = new Promise((_, reject) => { timer = setTimeout(() => reject(new Error("no reply in time")), ms); });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

async function run(commands_) {
  const replies = [];
  for (const command of commands_) {
    const [name, ...args] = command.map((arg) => Buffer.from(arg, "base64"));
    const why = unroutable(name.toString("latin1"), args);
    if (why !== null) {
      replies.push({ client: why });
      continue;
    }
    try {
      replies.push(encode(await within(client.callBuffer(name.toString("latin1"), ...args), 10000)));
    } catch (error) {
      replies.push({ err: String(error.message) });
    }
  }
  return replies;
}

const input = readline.createInterface({ input: process.stdin });
let queue = Promise.resolve();
input.on("line", (line) => {
  queue = queue.then(async () => {
    if (line === "quit") {
      client.disconnect();
      input.close();
      return;
    }
    process.stdout.write(JSON.stringify(await run(JSON.parse(line))) + "\n");
  });
});
client.on("error", (error) => process.stderr.write(`ioredis: ${error.message}\n`));
process.on("uncaughtException", (error) => process.stderr.write(`uncaught: ${error.stack}\n`));
