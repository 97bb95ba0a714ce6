#!/usr/bin/env python3
"""Writes the psql scripts of one bench/sql-shape run: `K` batches of `B` changes (3 steps each, one
webhook each), recorded then settled as applied, in the parallel-array shape (the statements of
src/store/sql/) or the composite-row shape (record-composite.sql, settle-composite.sql).

    gen.py VARIANT B K ROUND OUTDIR     # VARIANT: arrays | composite

Both shapes get the same rows. The arguments are ARRAY[...] / ROW(...) constructors, so the
figures are the statements' execution, not the decoding of binary parameters."""
import os, sys, uuid

variant, B, K, rnd, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
root = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..')
USERS = 64
VERSION = "'2026-01-01 00:00:00+00'::timestamptz"
TARGETS = ['juspay_customer', 'juspay_wallet', 'razorpay_upi']


def q(s):
    return 'null' if s is None else "'" + s.replace("'", "''") + "'"


def arr(items, t):
    return 'ARRAY[' + ', '.join(items) + ']::' + t + '[]'


def changes():
    n = 0
    for k in range(K):
        batch = []
        for b in range(B):
            user = 'u%02d' % ((k * B + b) % USERS) if B <= USERS else None
            # distinct users within a batch, like the batcher's typical batch
            cid = str(uuid.uuid5(uuid.NAMESPACE_URL, '%s/%s/%d/%d' % (variant, rnd, k, b)))
            batch.append(dict(
                id=cid, user='u%02d' % ((k * B + b) % USERS), caller='bench-caller',
                request_id='req-%d-%d' % (k, b), trace_id='0af7651916cd43dd8448eb211c80319c',
                addr='10.0.0.%d' % (b + 1), fields='email,mobile_number,name',
                key_id='k1', payload="'\\x" + ('ab' * 180) + "'::bytea", idem='idem-%s-%s-%d-%d' % (variant, rnd, k, b),
                fp="'\\x" + ('cd' * 32) + "'::bytea",
                values=q('{"email":{"hmac":"3f1a9c"},"mobile_number":{"hmac":"77e0b2"},"name":{"hmac":"a0d1"}}') + '::jsonb',
                actor=q('{"kind":"caller","caller":"bench-caller"}') + '::jsonb'))
            n += 1
        yield batch


def record_args(batch):
    steps = [(c, i + 1, t) for c in batch for i, t in enumerate(TARGETS)]
    scal = ['60', '86400', "'bench'", '30', '1000000']
    if variant == 'arrays':
        cols = [
            (lambda c: q(c['id']), 'uuid'), (lambda c: q(c['user']), 'text'), (lambda c: q(c['caller']), 'text'),
            (lambda c: q(c['request_id']), 'text'), (lambda c: q(c['trace_id']), 'text'), (lambda c: q(c['addr']), 'text'),
            (lambda c: q(c['fields']), 'text'), (lambda c: q(c['key_id']), 'text'), (lambda c: c['payload'], 'bytea'),
            (lambda c: q(c['idem']), 'text'), (lambda c: c['fp'], 'bytea'), (lambda c: VERSION, 'timestamptz'),
            (lambda c: c['values'], 'jsonb'), (lambda c: q('h1'), 'text')]
        a = [arr([f(c) for c in batch], t) for f, t in cols]
        s = [arr([q(c['id']) for c, _, _ in steps], 'uuid'), arr([str(n) for _, n, _ in steps], 'int'),
             arr([q(t) for _, _, t in steps], 'text'), arr([q('ref-' + c['user']) for c, _, _ in steps], 'text'),
             arr([q('email') for _ in steps], 'text')]
        return a + scal[:4] + s + [scal[4], arr([c['actor'] for c in batch], 'jsonb')]
    rows = ['ROW(%s)::change_record_row' % ', '.join([
        q(c['id']), q(c['user']), q(c['caller']), q(c['request_id']), q(c['trace_id']), q(c['addr']),
        q(c['fields']), q(c['key_id']), c['payload'], q(c['idem']), c['fp'], VERSION, c['values'], q('h1'),
        c['actor']]) for c in batch]
    srows = ['ROW(%s, %d, %s, %s, %s)::change_step_row' % (q(c['id']), n, q(t), q('ref-' + c['user']), q('email'))
             for c, n, t in steps]
    return ['ARRAY[%s]' % ', '.join(rows), 'ARRAY[%s]' % ', '.join(srows)] + scal


def settle_args(batch):
    outs = [(i + 1, c, n + 1, t) for i, c in enumerate(batch) for n, t in enumerate(TARGETS)]
    body = q('{"change_id":"x","status":"applied"}')
    fin = "'2026-06-01 00:00:00+00'::timestamptz"
    if variant == 'arrays':
        c = [arr([q(x['id']) for x in batch], 'uuid'), arr(['1' for _ in batch], 'bigint'),
             arr([q(x['user']) for x in batch], 'text'), arr([q(x['caller']) for x in batch], 'text'),
             arr([q(x['request_id']) for x in batch], 'text'), arr([q(x['trace_id']) for x in batch], 'text'),
             arr([q(x['addr']) for x in batch], 'text'), arr([q('applied') for _ in batch], 'text'),
             arr([q(x['fields']) for x in batch], 'text')]
        o = [arr([str(p) for p, _, _, _ in outs], 'bigint'), arr([str(n) for _, _, n, _ in outs], 'int'),
             arr([q('applied') for _ in outs], 'text'), arr(['null' for _ in outs], 'text'),
             arr(['null' for _ in outs], 'bool'), arr(['null' for _ in outs], 'int'),
             arr(['null' for _ in outs], 'text'), arr(['null' for _ in outs], 'text'),
             arr(['false' for _ in outs], 'bool'), arr([q(t) for _, _, _, t in outs], 'text'),
             arr([q('ref-' + x['user']) for _, x, _, _ in outs], 'text'), arr([q('email') for _ in outs], 'text'),
             arr([x['values'] for _, x, _, _ in outs], 'jsonb'), arr([q('h1') for _ in outs], 'text')]
        return (c + o + ['0', arr([q(x['id']) for _, x, _, _ in outs], 'uuid'),
                         arr([x['actor'] for x in batch], 'jsonb'), arr([fin for _ in batch], 'timestamptz'),
                         arr([str(i + 1) for i in range(len(batch))], 'bigint'),
                         arr([q(str(uuid.uuid5(uuid.NAMESPACE_OID, x['id']))) for x in batch], 'uuid'),
                         arr([q(x['caller']) for x in batch], 'text'), arr([q('change.applied') for _ in batch], 'text'),
                         arr([body for _ in batch], 'text'), "'profile_gateway_change_final'"])
    c = ['ROW(%s, 1, %s, %s, %s, %s, %s, %s, %s, %s, %s)::change_settle_row' % (
        q(x['id']), q(x['user']), q(x['caller']), q(x['request_id']), q(x['trace_id']), q(x['addr']),
        q('applied'), q(x['fields']), x['actor'], fin) for x in batch]
    o = ['ROW(%d, %d, %s, null, null, null, null, null, false, %s, %s, %s, %s, %s, %s)::change_outcome_row' % (
        p, n, q('applied'), q(t), q('ref-' + x['user']), q('email'), x['values'], q('h1'), q(x['id']))
        for p, x, n, t in outs]
    w = ['ROW(%d, %s, %s, %s, %s)::webhook_outbox_row' % (
        i + 1, q(str(uuid.uuid5(uuid.NAMESPACE_OID, x['id']))), q(x['caller']), q('change.applied'), body)
        for i, x in enumerate(batch)]
    return ['ARRAY[%s]' % ', '.join(c), 'ARRAY[%s]' % ', '.join(o), 'ARRAY[%s]' % ', '.join(w), '0',
            "'profile_gateway_change_final'"]


def sql(name):
    p = os.path.join(root, 'src/store/sql', name + '.sql') if variant == 'arrays' else \
        os.path.join(root, 'bench/sql-shape', name.split('_')[0] + '-composite.sql')
    return open(p).read()


def cpu_mark(label):
    return "\\! awk '{print $14 + $15}' /proc/$PGW_PID/stat > %s/%s\n" % (out, label)


batches = list(changes())
for stmt, args in (('record_changes', record_args), ('settle_changes', settle_args)):
    with open(os.path.join(out, stmt + '.psql'), 'w') as f:
        f.write('\\set QUIET on\n\\o /dev/null\nselect pg_backend_pid() as pid \\gset\n\\setenv PGW_PID :pid\n')
        f.write('prepare s as ' + sql(stmt) + ';\n')
        f.write(cpu_mark(stmt + '.start'))
        for b in batches:
            f.write('execute s(' + ', '.join(args(b)) + ');\n')
        f.write(cpu_mark(stmt + '.end'))
