import { describe, expect, it } from 'vitest';

import { SessionChannel } from '../channel';
import { ChatController, IChatApi } from '../chat/controller';
import { InflightStore } from '../chat/inflight';
import type { IConversationDetail, IModelList } from '../chat/types';
import { CloudIDEError } from '../errors';
import { FakeSocket, flush, MemoryStorage } from './fakes';

const CONV = '0b7c2a3e-1111-4222-8333-944455556666';
const T1 = 'a'.repeat(32);

class FakeApi implements IChatApi {
  calls: string[] = [];
  detail: IConversationDetail = { id: CONV, title: 'Fix x', created_at: '', updated_at: '',
    messages: [] };
  models: IModelList = { models: [], default: null };
  modelsError: Error | null = null;
  async listConversations() {
    this.calls.push('list');
    return [{ id: CONV, title: 'Fix x', created_at: '', updated_at: '' }];
  }
  async getConversation(id: string) {
    this.calls.push(`get ${id}`);
    return this.detail;
  }
  async renameConversation(id: string, title: string) {
    this.calls.push(`rename ${id} ${title}`);
    return { id, title, created_at: '', updated_at: '' };
  }
  async deleteConversation(id: string) {
    this.calls.push(`delete ${id}`);
  }
  async listModels() {
    this.calls.push('models');
    if (this.modelsError) {
      throw this.modelsError;
    }
    return this.models;
  }
}

/** One page: a channel on the shared storage, a controller, the sockets it opened. */
function page(storage: MemoryStorage, api = new FakeApi()) {
  const sockets: FakeSocket[] = [];
  const channel = new SessionChannel({
    url: 'ws://host/cloudide/api/ws',
    createSocket: url => {
      const socket = new FakeSocket(url);
      sockets.push(socket);
      return socket;
    },
    storage,
    setTimeout: () => 0,
    clearTimeout: () => undefined
  });
  const controller = new ChatController(channel, api, new InflightStore(storage));
  return { channel, controller, sockets, api };
}

describe('ChatController', () => {
  it('sends a first message: the new conversation gets its id, the turn ends ok', async () => {
    const storage = new MemoryStorage();
    const { controller, sockets, api } = page(storage);
    controller.start();
    sockets[0].welcome('s1', false);
    controller.task = 'fix';
    const done = controller.send('fix x', [{ kind: 'cell', path: 'nb.ipynb', cell_id: 'c1' }]);
    const req = sockets[0].request('chat.send');
    expect(req.payload).toEqual({ kind: 'chat.send', text: 'fix x', task: 'fix',
      context: [{ kind: 'cell', path: 'nb.ipynb', cell_id: 'c1' }] });
    const model = controller.current;
    expect(model.activeTurn?.status).toBe('pending');
    sockets[0].push({ type: 'event', id: req.id, seq: 1,
      payload: { kind: 'turn.started', conversation_id: CONV, turn_id: T1 } });
    expect(model.id).toBe(CONV);
    expect(new InflightStore(storage).list('s1').map(t => [t.turnId, t.seq, t.text]))
      .toEqual([[T1, 1, 'fix x']]);
    sockets[0].push({ type: 'stream', id: req.id, seq: 2,
      payload: { conversation_id: CONV, turn_id: T1, delta: 'Done.' } });
    sockets[0].push({ type: 'response', id: req.id, seq: 3,
      payload: { conversation_id: CONV, turn_id: T1, status: 'ok' } });
    await done;
    expect(model.turns[0].status).toBe('ok');
    expect(model.turns[0].items.map(i => i.type === 'assistant' && i.text)).toEqual(['Done.']);
    expect(new InflightStore(storage).list()).toEqual([]);
    expect(api.calls.filter(c => c === 'list').length).toBeGreaterThanOrEqual(2);
    // the next conversation is a new draft; the sent one stays reachable
    controller.newConversation();
    expect(controller.current.id).toBeNull();
    await controller.open(CONV);
    expect(controller.current).toBe(model);
  });

  it('a page reload in the middle of a turn rebuilds it from the replay and goes on', async () => {
    const storage = new MemoryStorage();
    const first = page(storage);
    first.controller.start();
    first.sockets[0].welcome('s1', false);
    first.sockets[0].push({ type: 'event', seq: 1, payload: { kind: 'index.progress' } });
    void first.controller.send('fix x');
    const req = first.sockets[0].request('chat.send');
    const frames = [
      { type: 'event', id: req.id, seq: 2,
        payload: { kind: 'turn.started', conversation_id: CONV, turn_id: T1 } },
      { type: 'stream', id: req.id, seq: 3,
        payload: { conversation_id: CONV, turn_id: T1, delta: 'Let me fix it.' } },
      { type: 'event', id: req.id, seq: 4,
        payload: { kind: 'tool.call', turn_id: T1, tool_call_id: 'c1', name: 'edit_file' } },
      { type: 'event', id: req.id, seq: 5,
        payload: { kind: 'approval.request', turn_id: T1, approval_id: 'ap-1',
          tool_call_id: 'c1', name: 'edit_file', arguments: { path: 'x.py' },
          arguments_hash: 'e'.repeat(64), reason: 'writes ask', risks: [] } }
    ];
    frames.forEach(f => first.sockets[0].push(f));

    // reload: a new page on the same sessionStorage
    const api = new FakeApi();
    api.detail = { ...api.detail, messages: [
      { turn_id: T1, role: 'user', content: { text: 'fix x', context: [], task: 'agent' } }] };
    const second = page(storage, api);
    second.controller.start();
    expect(second.sockets[0].url).toContain('session_id=s1&last_seq=1');
    const model = second.controller.current;
    expect(model.id).toBe(CONV);
    expect(model.activeTurn?.id).toBe(T1);
    expect(model.activeTurn?.user?.text).toBe('fix x'); // shown before anything loads
    second.sockets[0].welcome('s1', true, 5);
    frames.forEach(f => second.sockets[0].push(f));
    await flush();
    const turn = model.turnById(T1)!;
    expect(turn.items.map(i => i.type === 'tool' ? `T:${i.state}` : i.type === 'assistant' ? i.text : i.type))
      .toEqual(['Let me fix it.', 'T:awaiting_approval']);

    const card = turn.items[1];
    if (card.type !== 'tool') {
      throw new Error('no card');
    }
    void second.controller.respond(card, 'always');
    const answer = second.sockets[0].request('approval.respond');
    expect(answer.payload).toEqual({ kind: 'approval.respond', approval_id: 'ap-1',
      decision: 'always', arguments_hash: 'e'.repeat(64) });
    expect(card.state).toBe('approved');
    second.sockets[0].push({ type: 'response', id: answer.id, seq: 6,
      payload: { approval_id: 'ap-1', status: 'allowed' } });
    second.sockets[0].push({ type: 'event', id: req.id, seq: 7, payload: { kind: 'tool.result',
      turn_id: T1, tool_call_id: 'c1', name: 'edit_file', ok: true, content: 'ok',
      data: { path: 'x.py', diff: '@@ -1 +1 @@\n-a\n+b\n' } } });
    // the end answers the old page's request: it comes as an unmatched response
    second.sockets[0].push({ type: 'response', id: req.id, seq: 8,
      payload: { conversation_id: CONV, turn_id: T1, status: 'ok' } });
    await flush();
    expect(card.state).toBe('done');
    expect(turn.status).toBe('ok');
    expect(new InflightStore(storage).list()).toEqual([]);
    expect(model.canUndo(turn)).toBe(true);

    void second.controller.undo(turn);
    const undo = second.sockets[0].request('chat.undo');
    expect(undo.payload).toEqual({ kind: 'chat.undo', conversation_id: CONV, turn_id: T1 });
    second.sockets[0].push({ type: 'response', id: undo.id, seq: 9,
      payload: { restored: [{ path: 'x.py', action: 'restored' }] } });
    await flush();
    expect(turn.undone).toBe(true);
  });

  it('a refused send is explained: model not allowed (403)', async () => {
    const { controller, sockets } = page(new MemoryStorage());
    controller.start();
    sockets[0].welcome('s1', false);
    controller.selectedModel = 'gpt-huge';
    const done = controller.send('x');
    const req = sockets[0].request('chat.send');
    expect(req.payload.model).toBe('gpt-huge');
    sockets[0].push({ type: 'response', id: req.id, seq: 1, error: { status: 403,
      code: 'forbidden', message: "model 'gpt-huge' is not allowed for you" } });
    await done;
    const turn = controller.current.turns[0];
    expect(turn.status).toBe('error');
    const item = turn.items[0];
    expect(item.type === 'error' && item.explanation.kind).toBe('model_not_allowed');
  });

  it('stop before the turn has an id cancels it as soon as it starts', async () => {
    const { controller, sockets } = page(new MemoryStorage());
    controller.start();
    sockets[0].welcome('s1', false);
    void controller.send('x');
    const req = sockets[0].request('chat.send');
    await controller.cancel();
    expect(sockets[0].sent.some(f => f.payload?.kind === 'chat.cancel')).toBe(false);
    sockets[0].push({ type: 'event', id: req.id, seq: 1,
      payload: { kind: 'turn.started', conversation_id: CONV, turn_id: T1 } });
    expect(sockets[0].request('chat.cancel').payload).toEqual({ kind: 'chat.cancel', turn_id: T1 });
  });

  it('frames of a turn keep going to its conversation while another is shown', async () => {
    const { controller, sockets } = page(new MemoryStorage());
    controller.start();
    sockets[0].welcome('s1', false);
    await controller.open(CONV);
    const model = controller.current;
    void controller.send('x');
    const req = sockets[0].request('chat.send');
    expect(req.payload.conversation_id).toBe(CONV);
    sockets[0].push({ type: 'event', id: req.id, seq: 1,
      payload: { kind: 'turn.started', conversation_id: CONV, turn_id: T1 } });
    controller.newConversation();
    sockets[0].push({ type: 'stream', id: req.id, seq: 2,
      payload: { conversation_id: CONV, turn_id: T1, delta: 'hi' } });
    expect(controller.current.turns).toEqual([]);
    expect(model.turnById(T1)!.items.map(i => i.type === 'assistant' && i.text)).toEqual(['hi']);
  });

  it('reports no models (setup view) and models the user may not list', async () => {
    const api = new FakeApi();
    const { controller } = page(new MemoryStorage(), api);
    controller.start();
    await flush();
    expect(controller.models?.models).toEqual([]);
    api.modelsError = new CloudIDEError('not authorized to use cloudide:agent', { status: 403 });
    await controller.refreshModels();
    expect(controller.modelsError?.kind).toBe('forbidden');
  });

  it('a lost session forgets running turns and refetches what was stored', async () => {
    const storage = new MemoryStorage();
    const { controller, sockets, api, channel } = page(storage);
    controller.start();
    sockets[0].welcome('s1', false);
    await controller.open(CONV);
    void controller.send('x');
    const req = sockets[0].request('chat.send');
    sockets[0].push({ type: 'event', id: req.id, seq: 1,
      payload: { kind: 'turn.started', conversation_id: CONV, turn_id: T1 } });
    expect(new InflightStore(storage).list().length).toBe(1);
    api.calls = [];
    sockets[0].drop();
    channel.connect(); // the reconnect (its timer is a fake that never fires)
    sockets[1].welcome('s2', false);
    await flush();
    expect(new InflightStore(storage).list()).toEqual([]);
    expect(api.calls).toContain(`get ${CONV}`);
    expect(controller.current.turnById(T1)!.status).toBe('incomplete');
  });

  it('rename and delete go to REST; deleting the shown conversation shows a new one', async () => {
    const api = new FakeApi();
    const { controller, sockets } = page(new MemoryStorage(), api);
    controller.start();
    sockets[0].welcome('s1', false);
    await controller.refreshConversations();
    await controller.open(CONV);
    await controller.rename(CONV, 'Better');
    expect(controller.current.title).toBe('Better');
    expect(controller.conversations[0].title).toBe('Better');
    await controller.remove(CONV);
    expect(api.calls).toContain(`delete ${CONV}`);
    expect(controller.current.id).toBeNull();
    expect(controller.conversations).toEqual([]);
  });
  it('a reload without a running turn reopens the conversation shown before', async () => {
    const storage = new MemoryStorage();
    const first = page(storage);
    first.controller.start();
    first.sockets[0].welcome('s1', false);
    await first.controller.open(CONV);
    const second = page(storage);
    second.controller.start();
    await flush();
    expect(second.controller.current.id).toBe(CONV);
    expect(second.api.calls).toContain(`get ${CONV}`);
    expect(second.sockets[0].url).toContain('last_seq=0'); // nothing to replay
  });

  it('a lost session marks a turn restored after a reload incomplete', async () => {
    const storage = new MemoryStorage();
    new InflightStore(storage).add({ turnId: T1, conversationId: CONV, seq: 3, sessionId: 's1',
      text: 'x', context: [], task: 'agent' });
    storage.setItem('jupyter-cloudide:session', JSON.stringify({ sessionId: 's1', lastSeq: 9 }));
    const { controller, sockets } = page(storage);
    controller.start();
    expect(sockets[0].url).toContain('session_id=s1&last_seq=2');
    expect(controller.current.activeTurn?.id).toBe(T1);
    sockets[0].welcome('s9', false); // the server no longer has s1
    await flush();
    expect(controller.current.turnById(T1)!.status).toBe('incomplete');
    expect(controller.current.activeTurn).toBeNull();
    expect(new InflightStore(storage).list()).toEqual([]);
  });
});
