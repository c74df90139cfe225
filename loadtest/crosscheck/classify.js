// k6 cross-check of the loadtest numbers: the same image, headers and
// constant arrival rate, measured by an independent generator.
//   k6 run -e TARGET=http://127.0.0.1:8080 -e RATE=20 -e DURATION=20s \
//          -e IMAGE=/abs/path/models/testdata/chelsea.png -e VARIANT=full -e SLA_MS=300 classify.js
import http from 'k6/http';
import { check } from 'k6';

const img = open(__ENV.IMAGE, 'b');
const ctype = __ENV.IMAGE.endsWith('.png') ? 'image/png' : 'image/jpeg';

export const options = {
  discardResponseBodies: true,
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(99)', 'max'],
  scenarios: {
    constant: {
      executor: 'constant-arrival-rate',
      rate: Number(__ENV.RATE || 10),
      timeUnit: '1s',
      duration: __ENV.DURATION || '20s',
      preAllocatedVUs: 20,
      maxVUs: 200,
    },
  },
};

export default function () {
  const headers = { 'Content-Type': ctype, 'X-SLA-Ms': __ENV.SLA_MS || '300' };
  if (__ENV.VARIANT) headers['X-Variant'] = __ENV.VARIANT;
  const r = http.post(`${__ENV.TARGET}/classify?top_k=5`, img, { headers });
  check(r, { 'status 200': (x) => x.status === 200 });
}
