/**
 * The inline completion provider against a real SessionChannel on a scripted socket: the
 * test plays the server (stream frames, responses, error responses).
 */

import { describe, expect, it } from 'vitest';

import { IFrame, SessionChannel } from '../channel';
import {
  CloudIDEInlineProvider,
  IModelListLike,
  IStreamStep
} from '../completer/provider';
import { Clock, FakeSocket, flush } from './fakes';

const AUTOMATIC = 1;
const INVOKE = 0;
const fileWidget = { context: { path: 'pkg/calc.py' } } as any;

function request(text: string, offset = text.length) {
  return { text, offset, mimeType: 'text/x-python' };
}

function setup(listModels?: () => Promise<IModelListLike>) {
  const clock = new Clock(1_000_000);
  const sockets: FakeSocket[] = [];
  const channel = new SessionChannel({
    url: 'ws://host/cloudide/api/ws',
    createSocket: url => {
      const socket = new FakeSocket(url);
      sockets.push(socket);
      return socket;
    },
    storage: null,
    random: () => 0.5,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    backoff: { initialMs: 100, factor: 2, maxMs: 1000, jitter: 0 }
  });
  channel.connect();
  sockets[0].welcome('s1', false);
  const warnings: string[] = [];
  const provider = new CloudIDEInlineProvider({
    channel,
    listModels,
    now: () => clock.now,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    log: { warn: (m: string) => warnings.push(m), debug: () => undefined }
  });
  provider.configure({});
  let seq = 0;
  const socket = () => sockets[sockets.length - 1];
  const server = {
    /** The `complete` request frames sent so far. */
    completes: (): any[] =>
      sockets.flatMap(s => s.sent).filter(f => f.type === 'request' && f.payload.kind === 'complete'),
    last: (): any => socket().request('complete'),
    stream(req: any, delta: string, completionId = `cid-${req.id}`, extra: Partial<IFrame> = {}) {
      socket().push({ type: 'stream', id: req.id, seq: ++seq,
        payload: { completion_id: completionId, delta }, ...extra });
    },
    respond(req: any, text: string, status = 'ok') {
      socket().push({ type: 'response', id: req.id, seq: ++seq,
        payload: { completion_id: `cid-${req.id}`, text, model: 'coder', cached: false,
          fim: true, status } });
    },
    fail(req: any, error: Record<string, unknown>) {
      socket().push({ type: 'response', id: req.id, seq: ++seq, error: error as any });
    }
  };
  const fetch = (text: string, trigger = AUTOMATIC, widget = fileWidget) =>
    provider.fetch(request(text), { widget, triggerKind: trigger } as any);
  return { clock, channel, sockets, provider, server, fetch, warnings };
}

/** The next step of a provider's stream. */
async function step(gen: AsyncGenerator<IStreamStep>): Promise<IteratorResult<IStreamStep>> {
  return gen.next();
}

describe('CloudIDEInlineProvider', () => {
  it('streams a completion: growing text, then the response text as the last step', async () => {
    const { server, fetch, provider } = setup();
    const result = fetch('def add(a, b):\n    ');
    await flush();
    const req = server.last();
    expect(req.payload).toEqual({
      kind: 'complete', prefix: 'def add(a, b):\n    ', suffix: '', language: 'python',
      path: 'pkg/calc.py', max_tokens: 128
    });

    server.stream(req, 'return');
    const list = await result;
    expect(list.items).toHaveLength(1);
    const [item] = list.items;
    expect(item.insertText).toBe('return');
    expect(item.isIncomplete).toBe(true);
    expect(typeof item.token).toBe('string');

    const gen = provider.stream!(item.token!) as AsyncGenerator<IStreamStep>;
    const first = step(gen);
    server.stream(req, ' a');
    expect((await first).value.response).toMatchObject({ insertText: 'return a', isIncomplete: true });

    // frames that come while nobody waits are yielded together
    server.stream(req, ' +');
    server.stream(req, ' b  # adds');
    expect((await step(gen)).value.response.insertText).toBe('return a + b  # adds');

    // the response text is authoritative (the server cleans the model's answer)
    const last = step(gen);
    server.respond(req, 'return a + b');
    const end = await last;
    expect(end.value).toEqual({ response: { insertText: 'return a + b', isIncomplete: false },
      done: true });
    expect((await step(gen)).done).toBe(true);
  });

  it('ends at once when the response comes with the first frame (cache hit)', async () => {
    const { server, fetch, provider } = setup();
    const result = fetch('x = ');
    await flush();
    const req = server.last();
    server.stream(req, 'compute()');
    server.respond(req, 'compute()');
    const [item] = (await result).items;
    expect(item).toMatchObject({ insertText: 'compute()', isIncomplete: true });
    const gen = provider.stream!(item.token!) as AsyncGenerator<IStreamStep>;
    expect((await step(gen)).value).toEqual({
      response: { insertText: 'compute()', isIncomplete: false }, done: true });
    expect((await step(gen)).done).toBe(true);

    // a response without any stream frame: one complete item, nothing to stream
    const direct = fetch('y = ');
    await flush();
    server.respond(server.last(), 'other()');
    expect((await direct).items).toEqual([{ insertText: 'other()' }]);
  });

  it('gives no items for an empty answer', async () => {
    const { server, fetch } = setup();
    const result = fetch('x = ');
    await flush();
    server.respond(server.last(), '');
    expect((await result).items).toEqual([]);
  });

  it('ignores frames of other requests and replayed frames', async () => {
    const { server, fetch, provider } = setup();
    const result = fetch('x = ');
    await flush();
    const req = server.last();
    server.stream({ id: req.id + 100 }, 'other request');
    server.stream(req, 'replayed', undefined, { replayed: true });
    server.stream(req, 'a');
    const [item] = (await result).items;
    expect(item.insertText).toBe('a');
    const gen = provider.stream!(item.token!) as AsyncGenerator<IStreamStep>;
    const next = step(gen);
    server.stream(req, 'zzz', 'another-completion-id'); // same frame id, other completion
    server.stream(req, 'b');
    expect((await next).value.response.insertText).toBe('ab');
  });

  it('a newer fetch ends the older: no items while it waited, its stream stops', async () => {
    const { server, fetch, provider } = setup();

    // (1) the older one is still waiting for its first token
    const older = fetch('a = ');
    await flush();
    const olderReq = server.last();
    const newer = fetch('a = 1');
    expect((await older).items).toEqual([]);
    await flush();
    const newerReq = server.last();
    expect(newerReq.id).not.toBe(olderReq.id);
    expect(newerReq.payload.prefix).toBe('a = 1');
    // the server answers the stale one "cancelled" and streams the new one
    server.respond(olderReq, '', 'cancelled');
    server.stream(olderReq, 'late frame of the old one');
    server.stream(newerReq, '0');
    const [item] = (await newer).items;
    expect(item.insertText).toBe('0');

    // (2) the older one is streaming: its generator ends without a last step
    const gen = provider.stream!(item.token!) as AsyncGenerator<IStreamStep>;
    const pendingStep = step(gen);
    const third = fetch('a = 10');
    expect(await pendingStep).toEqual({ done: true, value: undefined });
    await flush();
    const thirdReq = server.last();
    server.stream(newerReq, 'ignored');
    server.respond(newerReq, '', 'cancelled');
    server.respond(thirdReq, '0');
    expect((await third).items).toEqual([{ insertText: '0' }]);
    expect(server.completes()).toHaveLength(3);
  });

  it('stops asking after a 404 (no completion model) until the settings change', async () => {
    const { server, fetch, provider, warnings } = setup();
    const result = fetch('x = ');
    await flush();
    server.fail(server.last(), { status: 404, code: 'not_found',
      message: 'no model available for completion' });
    expect((await result).items).toEqual([]);
    expect(provider.disabledReason).toBe('no model available for completion');

    expect((await fetch('x = 1')).items).toEqual([]);
    expect((await fetch('x = 1', INVOKE)).items).toEqual([]);
    expect(server.completes()).toHaveLength(1);
    expect(warnings).toEqual([]); // quiet

    provider.configure({ maxTokens: 64 });
    const again = fetch('x = 2', INVOKE);
    await flush();
    expect(server.completes()).toHaveLength(2);
    expect(server.last().payload.max_tokens).toBe(64);
    server.respond(server.last(), '3');
    expect((await again).items).toEqual([{ insertText: '3' }]);
  });

  it('backs off after a 429 until retry_after_s has passed', async () => {
    const { server, fetch, clock, provider } = setup();
    const result = fetch('x = ');
    await flush();
    server.fail(server.last(), { status: 429, code: 'rate_limited', message: 'slow down',
      retry_after_s: 5 });
    expect((await result).items).toEqual([]);
    expect(provider.blockedUntil).toBe(clock.now + 5000);

    clock.advance(4900);
    expect((await fetch('x = 1', INVOKE)).items).toEqual([]);
    expect(server.completes()).toHaveLength(1);

    clock.advance(100);
    const later = fetch('x = 1');
    await flush();
    expect(server.completes()).toHaveLength(2);
    server.respond(server.last(), '1');
    expect((await later).items).toEqual([{ insertText: '1' }]);
  });

  it('gives no items when the connection is lost, and asks nothing while offline', async () => {
    const { server, fetch, sockets, channel, clock } = setup();
    const result = fetch('x = ');
    await flush();
    sockets[0].drop();
    expect((await result).items).toEqual([]);
    expect(channel.state).toBe('reconnecting');
    expect((await fetch('x = 1')).items).toEqual([]);
    clock.advance(100);
    sockets[1].welcome('s1', true, 0);
    // nothing was queued for the new connection but the one request that was in flight
    expect(sockets[1].sent.filter(f => f.type === 'request')).toEqual([]);
    const back = fetch('x = 2');
    await flush();
    expect(server.completes()).toHaveLength(2);
    server.respond(server.last(), '2');
    expect((await back).items).toEqual([{ insertText: '2' }]);
  });

  it('gives up on a request without a first token within the timeout', async () => {
    const { server, fetch, clock, provider } = setup();
    provider.configure({ timeout: 2000 });
    const result = fetch('x = ');
    await flush();
    const req = server.last();
    clock.advance(2000);
    expect((await result).items).toEqual([]);
    server.stream(req, 'too late'); // ignored
    const next = fetch('x = 1');
    await flush();
    server.respond(server.last(), 'ok');
    expect((await next).items).toEqual([{ insertText: 'ok' }]);
  });

  it('ends a stream that fails midway with no text and the error mark', async () => {
    const { server, fetch, provider, warnings } = setup();
    const result = fetch('x = ');
    await flush();
    const req = server.last();
    server.stream(req, 'par');
    const [item] = (await result).items;
    const gen = provider.stream!(item.token!) as AsyncGenerator<IStreamStep>;
    const next = step(gen);
    server.fail(req, { status: 500, code: 'internal_error',
      message: 'completion failed (timeout): upstream' });
    expect((await next).value).toEqual({
      response: { insertText: '', isIncomplete: false,
        error: { message: 'completion failed (timeout): upstream' } },
      done: true
    });
    expect(warnings).toHaveLength(1);
  });

  it('asks only on explicit invocation when no model has the completion role', async () => {
    const models: IModelListLike = { models: [{ id: 'gpt', roles: ['chat', 'agent'] }] };
    const { server, fetch, provider } = setup(async () => models);
    await provider.checkModels();
    expect(provider.availability).toBe('none');
    expect((await fetch('x = ')).items).toEqual([]);
    expect(server.completes()).toHaveLength(0);

    // the server's completion_model may name a model without the role: invoking finds out
    const invoked = fetch('x = ', INVOKE);
    await flush();
    expect(server.completes()).toHaveLength(1);
    server.respond(server.last(), '42');
    expect((await invoked).items).toEqual([{ insertText: '42' }]);
    expect(provider.availability).toBe('available');

    const typed = fetch('x = 4');
    await flush();
    expect(server.completes()).toHaveLength(2);
    server.respond(server.last(), '2');
    await typed;
    await provider.checkModels(); // a list without the role does not undo what worked
    expect(provider.availability).toBe('available');
  });

  it('is on when a model has the completion role', async () => {
    const { provider } = setup(async () => ({
      models: [{ id: 'coder', roles: ['completion'] }]
    }));
    await provider.checkModels();
    expect(provider.availability).toBe('available');
  });

  it('sends the notebook around the cursor', async () => {
    const { server, fetch } = setup();
    const panel = {
      context: { path: 'nb.ipynb' },
      content: {
        activeCellIndex: 1,
        model: {
          getMetadata: (key: string) => (key === 'language_info' ? { name: 'python' } : undefined),
          sharedModel: { cells: [
            { cell_type: 'code', getSource: () => 'import math' },
            { cell_type: 'code', getSource: () => 'math.' },
            { cell_type: 'markdown', getSource: () => 'Done' }
          ] }
        }
      }
    };
    void fetch('math.', AUTOMATIC, panel);
    await flush();
    expect(server.last().payload).toMatchObject({
      prefix: '# %%\nimport math\n\n# %%\nmath.',
      suffix: '\n\n# %% [markdown]\n# Done',
      language: 'python',
      path: 'nb.ipynb'
    });
  });

  it('passes its settings on: model, caps, maximum tokens', async () => {
    const { server, fetch, provider } = setup();
    provider.configure({ model: ' coder-small ', maxTokens: 5000, maxPrefixChars: 3 });
    void fetch('abcdef');
    await flush();
    expect(server.last().payload).toMatchObject({ prefix: 'def', model: 'coder-small',
      max_tokens: 1024 });
    expect(provider.schema.default).toMatchObject({ enabled: true, debouncerDelay: 300 });
  });
});
