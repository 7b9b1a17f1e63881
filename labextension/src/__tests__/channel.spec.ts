import { describe, expect, it } from 'vitest';

import { IFrame, SessionChannel } from '../channel';
import { CloudIDEError } from '../errors';
import { Clock, FakeSocket, MemoryStorage } from './fakes';

function setup(storage = new MemoryStorage()) {
  const sockets: FakeSocket[] = [];
  const clock = new Clock();
  const channel = new SessionChannel({
    url: 'ws://host/base/cloudide/api/ws',
    createSocket: url => {
      const socket = new FakeSocket(url);
      sockets.push(socket);
      return socket;
    },
    storage,
    random: () => 0.5,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    backoff: { initialMs: 100, factor: 2, maxMs: 1000, jitter: 0.25 }
  });
  const frames: IFrame[] = [];
  channel.frameReceived.connect((_, frame) => frames.push(frame));
  return { channel, sockets, clock, frames, storage };
}

describe('SessionChannel', () => {
  it('correlates responses and rejects error frames with a typed error', async () => {
    const { channel, sockets } = setup();
    channel.connect();
    sockets[0].welcome('s1', false);
    const ok = channel.request('health');
    const bad = channel.request('chat.send', { text: 'x' });
    const [first, second] = sockets[0].sent;
    expect(first).toEqual({ type: 'request', id: first.id, payload: { kind: 'health' } });
    sockets[0].push({ type: 'response', id: second.id, seq: 1,
      error: { status: 429, code: 'rate_limited', message: 'slow down', retry_after_s: 3 } });
    sockets[0].push({ type: 'response', id: first.id, seq: 2, payload: { status: 'ok' } });
    await expect(ok).resolves.toEqual({ status: 'ok' });
    const error = await bad.catch(e => e);
    expect(error).toBeInstanceOf(CloudIDEError);
    expect([error.status, error.code, error.retryAfter]).toEqual([429, 'rate_limited', 3]);
  });

  it('queues sends while offline and flushes them in order after the welcome', () => {
    const { channel, sockets } = setup();
    void channel.request('a');
    void channel.request('b');
    channel.connect();
    expect(sockets[0].sent).toEqual([]);
    sockets[0].welcome('s1', false);
    expect(sockets[0].sent.map(f => f.payload.kind)).toEqual(['a', 'b']);
  });

  it('reconnects with backoff, resumes by seq and ignores replayed frames', () => {
    const { channel, sockets, clock, frames } = setup();
    channel.connect();
    sockets[0].welcome('s1', false);
    sockets[0].push({ type: 'stream', seq: 1, payload: { delta: 'Hel' } });
    sockets[0].push({ type: 'stream', seq: 2, payload: { delta: 'lo' } });
    sockets[0].drop();
    expect(channel.state).toBe('reconnecting');
    clock.advance(99);
    expect(sockets.length).toBe(1);
    clock.advance(1);
    expect(sockets.length).toBe(2);
    expect(sockets[1].url).toBe('ws://host/base/cloudide/api/ws?session_id=s1&last_seq=2');
    sockets[1].drop(); // a failed attempt: the next waits twice as long
    clock.advance(199);
    expect(sockets.length).toBe(2);
    clock.advance(1);
    sockets[2].welcome('s1', true, 3);
    sockets[2].push({ type: 'stream', seq: 2, payload: { delta: 'lo' } }); // replayed
    sockets[2].push({ type: 'stream', seq: 3, payload: { delta: '!' } });
    expect(frames.map(f => f.payload.delta)).toEqual(['Hel', 'lo', '!']);
    expect(channel.state).toBe('open');
  });

  it('a request sent before a drop is answered by the replay, not sent twice', async () => {
    const { channel, sockets, clock } = setup();
    channel.connect();
    sockets[0].welcome('s1', false);
    const answer = channel.request('search', { query: 'q' });
    const { id } = sockets[0].sent[0];
    sockets[0].drop();
    clock.advance(100);
    sockets[1].welcome('s1', true);
    sockets[1].push({ type: 'response', id, seq: 1, payload: { results: [] } });
    await expect(answer).resolves.toEqual({ results: [] });
    expect(sockets[1].sent).toEqual([]);
  });

  it('request ids start at a random point, so a reloaded page does not reuse the old ones', () => {
    const ids = [0.1, 0.7].map(r => {
      const socket: FakeSocket[] = [];
      const channel = new SessionChannel({
        url: 'ws://h/ws', storage: null, random: () => r,
        createSocket: url => { const s = new FakeSocket(url); socket.push(s); return s; }
      });
      channel.connect();
      socket[0].welcome('s', false);
      void channel.request('health');
      return socket[0].sent[0].id as number;
    });
    expect(ids[0]).not.toBe(ids[1]);
    expect(Math.min(...ids)).toBeGreaterThan(1000);
  });

  it('survives a reload: a new channel resumes the stored session', () => {
    const storage = new MemoryStorage();
    const first = setup(storage);
    first.channel.connect();
    first.sockets[0].welcome('s9', false);
    first.sockets[0].push({ type: 'event', seq: 7, payload: { kind: 'turn.started' } });
    const second = setup(storage); // the reloaded page
    second.channel.connect();
    expect(second.sockets[0].url).toContain('session_id=s9&last_seq=7');
  });

  it('a lost session resets: sent requests fail, sessionReset fires, seq restarts', async () => {
    const { channel, sockets, clock, frames } = setup();
    let resets = 0;
    channel.sessionReset.connect(() => resets++);
    channel.connect();
    sockets[0].welcome('s1', false);
    sockets[0].push({ type: 'event', seq: 40, payload: {} });
    const lost = channel.request('chat.send', { text: 'x' });
    sockets[0].drop();
    clock.advance(100);
    sockets[1].welcome('s2', false, 0);
    const error = await lost.catch(e => e);
    expect(error.code).toBe('connection_lost');
    expect(resets).toBe(1);
    sockets[1].push({ type: 'event', seq: 1, payload: { kind: 'new' } });
    expect(frames.map(f => f.payload.kind)).toEqual([undefined, 'new']);
  });

  it('a silent dead connection is detected by the heartbeat', () => {
    const { channel, sockets, clock } = setup();
    channel.connect();
    sockets[0].welcome('s1', false);
    clock.advance(30_000);
    expect(sockets[0].sent[sockets[0].sent.length - 1].type).toBe('ping');
    clock.advance(30_000); // no pong came
    expect(sockets[0].closed).toBe(4000);
    clock.advance(100);
    expect(sockets.length).toBe(2);
  });

  it('taken over by another tab: starts a session of its own', () => {
    const { channel, sockets, clock } = setup();
    channel.connect();
    sockets[0].welcome('s1', false);
    sockets[0].drop(4009);
    clock.advance(100);
    expect(sockets[1].url).toBe('ws://host/base/cloudide/api/ws');
  });

  it('caps the offline queue and rejects on dispose', async () => {
    const { channel } = setup();
    const requests = Array.from({ length: 101 }, (_, i) =>
      channel.request('k', { i }).catch(e => e.code)
    );
    expect(await requests[0]).toBe('connection_lost');
    channel.dispose();
    expect(await requests[100]).toBe('connection_lost');
    await expect(channel.request('k')).rejects.toBeInstanceOf(CloudIDEError);
  });
  it('keeps a query string the URL already has (e.g. ?token=)', () => {
    const storage = new MemoryStorage();
    storage.setItem('jupyter-cloudide:session', JSON.stringify({ sessionId: 's1', lastSeq: 4 }));
    const sockets: FakeSocket[] = [];
    const channel = new SessionChannel({
      url: 'ws://host/cloudide/api/ws?token=abc',
      createSocket: url => {
        const socket = new FakeSocket(url);
        sockets.push(socket);
        return socket;
      },
      storage
    });
    channel.connect();
    expect(sockets[0].url).toBe('ws://host/cloudide/api/ws?token=abc&session_id=s1&last_seq=4');
    channel.dispose();
  });

  it('replayFrom() after a reload replays an earlier turn, marked as replayed', () => {
    const storage = new MemoryStorage();
    const first = setup(storage);
    first.channel.connect();
    first.sockets[0].welcome('s1', false);
    for (let seq = 1; seq <= 5; seq++) {
      first.sockets[0].push({ type: 'event', seq, payload: { n: seq } });
    }
    const second = setup(storage); // the reloaded page
    second.channel.replayFrom(2);
    second.channel.replayFrom(4); // never raises the resume point again
    second.channel.connect();
    expect(second.sockets[0].url).toContain('session_id=s1&last_seq=2');
    second.sockets[0].welcome('s1', true, 6);
    for (let seq = 3; seq <= 6; seq++) {
      second.sockets[0].push({ type: 'event', seq, payload: { n: seq } });
    }
    second.sockets[0].push({ type: 'event', seq: 4, payload: { n: 4 } }); // duplicate
    expect(second.frames.map(f => [f.payload.n, f.replayed === true])).toEqual([
      [3, true],
      [4, true],
      [5, true],
      [6, false]
    ]);
    expect(second.channel.lastSeq).toBe(6);
  });

  it('replayFrom() while open reconnects at once and asks for the replay', () => {
    const { channel, sockets, frames } = setup();
    channel.connect();
    sockets[0].welcome('s1', false);
    sockets[0].push({ type: 'stream', seq: 1, payload: { delta: 'a' } });
    sockets[0].push({ type: 'stream', seq: 2, payload: { delta: 'b' } });
    channel.replayFrom(0);
    expect(sockets[0].closed).toBe(1000);
    expect(sockets.length).toBe(2);
    expect(sockets[1].url).toContain('session_id=s1&last_seq=0');
    sockets[0].push({ type: 'stream', seq: 3, payload: { delta: 'late' } }); // old socket: ignored
    sockets[1].welcome('s1', true, 2);
    sockets[1].push({ type: 'stream', seq: 1, payload: { delta: 'a' } });
    sockets[1].push({ type: 'stream', seq: 2, payload: { delta: 'b' } });
    expect(frames.map(f => f.payload.delta)).toEqual(['a', 'b', 'a', 'b']);
    expect(frames.slice(2).every(f => f.replayed)).toBe(true);
  });

  it('replayFrom() without a stored session does nothing', () => {
    const { channel, sockets } = setup();
    channel.replayFrom(0);
    channel.connect();
    expect(sockets[0].url).toBe('ws://host/base/cloudide/api/ws');
  });

  it('responses no request waits for (sent before a reload) come as unmatchedResponse', () => {
    const { channel, sockets } = setup();
    const unmatched: IFrame[] = [];
    channel.unmatchedResponse.connect((_, frame) => unmatched.push(frame));
    channel.connect();
    sockets[0].welcome('s1', false);
    const mine = channel.request('x');
    const { id } = sockets[0].sent[0];
    sockets[0].push({ type: 'response', id: 99, seq: 1, payload: { turn_id: 't', status: 'ok' } });
    sockets[0].push({ type: 'response', id, seq: 2, payload: { mine: true } });
    sockets[0].push({ type: 'response', id: 99, seq: 1, payload: {} }); // duplicate: dropped
    expect(unmatched.map(f => f.payload)).toEqual([{ turn_id: 't', status: 'ok' }]);
    return expect(mine).resolves.toEqual({ mine: true });
  });

  it('onId gives the request id that its event frames carry', () => {
    const { channel, sockets } = setup();
    let requestId = -1;
    void channel.request('chat.send', { text: 'x' }, { onId: id => (requestId = id) });
    channel.connect();
    sockets[0].welcome('s1', false);
    expect(sockets[0].sent[0].id).toBe(requestId);
  });

  it('reports a replay that starts later than asked (frames lost from the buffer)', () => {
    const { channel, sockets, clock } = setup();
    const gaps: any[] = [];
    channel.replayGap.connect((_, gap) => gaps.push(gap));
    channel.connect();
    sockets[0].welcome('s1', false);
    sockets[0].push({ type: 'event', seq: 3, payload: {} }); // a fresh session: no gap check
    sockets[0].drop();
    clock.advance(100);
    sockets[1].welcome('s1', true, 20);
    sockets[1].push({ type: 'event', seq: 9, payload: {} });
    sockets[1].push({ type: 'event', seq: 10, payload: {} });
    expect(gaps).toEqual([{ expected: 4, received: 9 }]);
    sockets[1].drop();
    clock.advance(200);
    sockets[2].welcome('s1', true, 11);
    sockets[2].push({ type: 'event', seq: 11, payload: {} });
    expect(gaps.length).toBe(1);
  });
});
