// Node sharp doing the variant stage's image job, for bench/variant.py: each photo -> display 1600 px
// and thumb 400 px WebP (q80, effort 4 = sharp's defaults), EXIF autorotated, metadata stripped (sharp's
// default), `pool` photos at a time (pool = cores). Each variant is its own pipeline from the JPEG bytes,
// the way sharp is used (sharp's shrink-on-load makes the thumb's decode cheap); both run together.
//
//   node variants.js '{"paths": [...], "quality": 80, "effort": 4, "pool": 2, "keep": "/tmp/out", "samples": 4}'
//
// Prints one line `RESULT {...}`: wall seconds of the timed batch (after a warm-up of `pool` photos),
// per-photo seconds, bytes per variant, CPU seconds and peak RSS of this process. The display WebPs of
// the first `samples` photos are written to `keep` so the bench scores them against its reference.
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const sharp = require('sharp');

const VARIANTS = [['display', 1600], ['thumb', 400]];

async function one(file, options) {
  const started = process.hrtime.bigint();
  const source = await fs.promises.readFile(file);
  const encoded = await Promise.all(VARIANTS.map(([, size]) =>
    sharp(source, { failOn: 'error' })
      .rotate()
      .resize({ width: size, height: size, fit: 'inside', withoutEnlargement: true })
      .webp({ quality: options.quality, effort: options.effort })
      .toBuffer()));
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  return { seconds, display: encoded[0], thumb: encoded[1] };
}

async function pool(files, options) {
  const results = new Array(files.length);
  let next = 0;
  async function worker() {
    while (next < files.length) {
      const index = next++;
      results[index] = await one(files[index], options);
    }
  }
  await Promise.all(Array.from({ length: Math.min(options.pool, files.length) }, worker));
  return results;
}

async function main() {
  const options = JSON.parse(process.argv[2]);
  if (options.threads !== undefined) sharp.concurrency(options.threads);
  sharp.cache(false); // every photo is new, as in the stage
  await pool(options.paths.slice(0, options.pool), options); // warm up: codecs loaded, threads started
  const cpuBefore = process.cpuUsage();
  const started = process.hrtime.bigint();
  const results = await pool(options.paths, options);
  const wall = Number(process.hrtime.bigint() - started) / 1e9;
  const cpu = process.cpuUsage(cpuBefore);
  if (options.keep) {
    fs.mkdirSync(options.keep, { recursive: true });
    results.slice(0, options.samples || 0).forEach((r, i) => {
      fs.writeFileSync(path.join(options.keep, `${i}.webp`), r.display);
    });
  }
  const out = {
    wall,
    per_image: results.map((r) => r.seconds),
    display: results.map((r) => r.display.length),
    thumb: results.map((r) => r.thumb.length),
    cpu_s: (cpu.user + cpu.system) / 1e6,
    rss_mb: process.resourceUsage().maxRSS / 1024,
    sharp: sharp.versions.sharp,
    vips: sharp.versions.vips,
    threads: sharp.concurrency(),
  };
  process.stdout.write(`RESULT ${JSON.stringify(out)}\n`);
}

main().catch((err) => {
  process.stderr.write(`${err.stack || err}\n`);
  process.exit(1);
});
