// BullMQ side of scripts/bench-runtime: the same two measurements as
// workers/examples/bench.rs, printed as key=value lines.
//
//   node bench-bullmq.mjs drain  <redis-url> <prefix> <jobs> <concurrency>
//   node bench-bullmq.mjs pickup <redis-url> <prefix> <rate-per-s> <seconds> <concurrency>
//
// Run from a folder where `bullmq` is installed (the bench script installs it
// into a temporary folder).
import { Queue, Worker } from 'bullmq';
import IORedis from 'ioredis';
import { performance } from 'node:perf_hooks';

const [mode, url, prefix, ...rest] = process.argv.slice(2);
const u = new URL(url);
const redisOptions = {
  host: u.hostname,
  port: Number(u.port || 6379),
  db: Number((u.pathname || '/0').slice(1) || 0),
  maxRetriesPerRequest: null,
};
// BullMQ 6 wants a client instance under ESM; one per Queue / Worker, as
// BullMQ's own defaults would create.
const client = () => new IORedis(redisOptions);
const NAME = 'bench';
const nowMs = () => performance.timeOrigin + performance.now();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function drain(jobs, concurrency) {
  const queue = new Queue(NAME, { connection: client(), prefix });
  await queue.waitUntilReady();
  let t = performance.now();
  for (let i = 0; i < jobs; i += 1000) {
    const n = Math.min(1000, jobs - i);
    await queue.addBulk(Array.from({ length: n }, () => ({ name: 'noop', data: { sent: 0 } })));
  }
  console.log(`bullmq_enqueue_s=${((performance.now() - t) / 1000).toFixed(3)}`);

  let done = 0;
  let finish;
  const finished = new Promise((r) => (finish = r));
  const started = performance.now();
  const worker = new Worker(NAME, async () => {}, { connection: client(), prefix, concurrency });
  worker.on('completed', () => {
    done += 1;
    if (done === jobs) finish();
  });
  worker.on('failed', (_job, err) => console.error(`failed: ${err}`));
  await finished;
  const elapsed = (performance.now() - started) / 1000;
  await worker.close();
  console.log(`bullmq_drain_s=${elapsed.toFixed(3)}`);
  console.log(`bullmq_drain_jobs_per_s=${(jobs / elapsed).toFixed(0)}`);
  await queue.obliterate({ force: true });
  await queue.close();
}

function percentile(sorted, p) {
  return sorted[Math.round((sorted.length - 1) * p)];
}

async function pickup(rate, seconds, concurrency) {
  const total = rate * seconds;
  const queue = new Queue(NAME, { connection: client(), prefix });
  await queue.waitUntilReady();
  const latencies = [];
  let done = 0;
  let finish;
  const finished = new Promise((r) => (finish = r));
  const worker = new Worker(
    NAME,
    async (job) => {
      latencies.push(nowMs() - job.data.sent);
    },
    { connection: client(), prefix, concurrency },
  );
  worker.on('completed', () => {
    done += 1;
    if (done === total) finish();
  });
  await worker.waitUntilReady();
  await sleep(500); // let the worker reach its idle wait

  const every = 1000 / rate;
  const start = performance.now();
  const pushes = [];
  for (let i = 0; i < total; i++) {
    const wait = start + i * every - performance.now();
    if (wait > 0) await sleep(wait);
    pushes.push(queue.add('noop', { sent: nowMs() }));
  }
  await Promise.all(pushes);
  await Promise.race([finished, sleep(60000).then(() => { throw new Error('not every job ran within 60 s'); })]);
  await worker.close();
  latencies.sort((a, b) => a - b);
  console.log(`bullmq_pickup_jobs=${total}`);
  console.log(`bullmq_pickup_p50_ms=${percentile(latencies, 0.5).toFixed(3)}`);
  console.log(`bullmq_pickup_p99_ms=${percentile(latencies, 0.99).toFixed(3)}`);
  console.log(`bullmq_pickup_max_ms=${percentile(latencies, 1).toFixed(3)}`);
  await queue.obliterate({ force: true });
  await queue.close();
}

try {
  if (mode === 'drain' && rest.length === 2) await drain(Number(rest[0]), Number(rest[1]));
  else if (mode === 'pickup' && rest.length === 3) await pickup(Number(rest[0]), Number(rest[1]), Number(rest[2]));
  else throw new Error('usage: bench-bullmq.mjs drain <url> <prefix> <jobs> <concurrency> | pickup <url> <prefix> <rate> <seconds> <concurrency>');
  process.exit(0);
} catch (e) {
  console.error(e);
  process.exit(1);
}
