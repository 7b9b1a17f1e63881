import { describe, expect, it } from 'vitest';

import type { IFrame } from '../channel';
import { CloudIDEError } from '../errors';
import { ConversationModel } from '../chat/model';
import type { IConversationDetail, IToolItem, ITurn } from '../chat/types';

const CONV = '0b7c2a3e-1111-4222-8333-944455556666';
const T1 = 'a'.repeat(32);
const T2 = 'b'.repeat(32);

/** Frames as the server's agent loop emits them (agent/loop.py, agent/service.py). */
class Frames {
  seq = 0;
  constructor(readonly turnId: string, readonly requestId: number | undefined = 7) {}
  event(payload: Record<string, unknown>): IFrame {
    return { type: 'event', id: this.requestId, seq: ++this.seq,
      payload: { turn_id: this.turnId, ...payload } };
  }
  started(conversationId = CONV): IFrame {
    return this.event({ kind: 'turn.started', conversation_id: conversationId });
  }
  delta(text: string, conversationId = CONV): IFrame {
    return { type: 'stream', id: this.requestId, seq: ++this.seq,
      payload: { conversation_id: conversationId, turn_id: this.turnId, delta: text } };
  }
}

function texts(turn: ITurn): string[] {
  return turn.items.map(i => {
    switch (i.type) {
      case 'assistant':
        return `A:${i.text}`;
      case 'tool':
        return `T:${i.name}:${i.state}`;
      case 'notice':
        return `N:${i.kind}`;
      case 'error':
        return `E:${i.explanation.kind}`;
    }
  });
}

function tool(turn: ITurn, id: string): IToolItem {
  const item = turn.items.find(i => i.type === 'tool' && i.toolCallId === id);
  if (!item || item.type !== 'tool') {
    throw new Error(`no tool ${id}`);
  }
  return item;
}

const DIFF = '--- a/x.py\n+++ b/x.py\n@@ -1 +1 @@\n-a = 1\n+a = 2\n';

/** One full agent turn: text, an approved edit, usage twice, the final text. */
function fullTurn(f: Frames): IFrame[] {
  return [
    f.started(),
    f.event({ kind: 'prompt', model: 'm1', task: 'agent', tokens: 900, window: 8000,
      items: [{ kind: 'system', tokens: 100 },
        { kind: 'cell', title: 'nb.ipynb#c1', status: 'included', tokens: 50 }] }),
    f.event({ kind: 'model.call', model: 'm1', reason: 'default model', step: 1 }),
    f.delta('Let me '),
    f.delta('fix it.'),
    f.event({ kind: 'tool.call', tool_call_id: 'c1', name: 'edit_file' }),
    f.event({ kind: 'turn.usage', model: 'm1', input_tokens: 1000, output_tokens: 20,
      cached_tokens: 0, cost: 0.0012, estimated: false }),
    f.event({ kind: 'approval.request', approval_id: 'ap-1', tool_call_id: 'c1',
      name: 'edit_file', arguments: { path: 'x.py', old_string: 'a = 1', new_string: 'a = 2' },
      arguments_hash: 'f'.repeat(64), reason: 'writes ask', risks: [] }),
    f.event({ kind: 'tool.result', tool_call_id: 'c1', name: 'edit_file', ok: true,
      content: "Updated 'x.py': +1 -1 lines.", data: { path: 'x.py', created: false, diff: DIFF } }),
    f.event({ kind: 'model.call', model: 'm1', reason: 'default model', step: 2 }),
    f.delta('Done.'),
    f.event({ kind: 'turn.usage', model: 'm1', input_tokens: 1100, output_tokens: 5,
      cached_tokens: 800, cost: 0.0008, estimated: true })
  ];
}

describe('ConversationModel: live frames', () => {
  it('reduces a full turn: text per step, tool card with approval, diff, usage', () => {
    const model = new ConversationModel(CONV);
    const turn = model.beginTurn('fix x', [{ kind: 'file', path: 'x.py' }], 'agent', 7);
    const f = new Frames(T1);
    const frames = fullTurn(f);
    frames.slice(0, 8).forEach(fr => model.applyFrame(fr));
    expect(turn.id).toBe(T1);
    expect(turn.status).toBe('running');
    expect(texts(turn)).toEqual(['A:Let me fix it.', 'T:edit_file:awaiting_approval']);
    const card = tool(turn, 'c1');
    expect(card.approval).toEqual({ id: 'ap-1', argumentsHash: 'f'.repeat(64),
      reason: 'writes ask', risks: [] });
    expect(card.arguments).toEqual({ path: 'x.py', old_string: 'a = 1', new_string: 'a = 2' });
    model.markDecision('ap-1', 'allow');
    expect(card.state).toBe('approved');
    frames.slice(8).forEach(fr => model.applyFrame(fr));
    expect(texts(turn)).toEqual(['A:Let me fix it.', 'T:edit_file:done', 'A:Done.']);
    expect(card.diff).toBe(DIFF);
    expect(card.path).toBe('x.py');
    expect(card.edits).toBe(true);
    expect(turn.usage).toMatchObject({ inputTokens: 2100, outputTokens: 25, cachedTokens: 800,
      calls: 2, estimated: true, models: ['m1'] });
    expect(turn.usage!.cost).toBeCloseTo(0.002, 9);
    expect([turn.model, turn.modelReason]).toEqual(['m1', 'default model']);
    expect(turn.prompt?.context).toEqual([{ title: 'nb.ipynb#c1', status: 'included' }]);
    model.finishTurn({ conversation_id: CONV, turn_id: T1, status: 'ok' });
    expect(turn.status).toBe('ok');
    expect(model.activeTurn).toBeNull();
    expect(model.canUndo(turn)).toBe(true);
  });

  it('ignores duplicate and out-of-order seqs', () => {
    const model = new ConversationModel(CONV);
    model.beginTurn('hi', [], 'chat', 7);
    const f = new Frames(T1);
    const started = f.started();
    const a = f.delta('one ');
    const b = f.delta('two');
    expect(model.applyFrame(started)).toBe(true);
    expect(model.applyFrame(a)).toBe(true);
    expect(model.applyFrame(a)).toBe(false); // duplicate
    expect(model.applyFrame(b)).toBe(true);
    expect(model.applyFrame(a)).toBe(false); // older than the last applied
    expect(model.applyFrame(started)).toBe(false);
    expect(texts(model.turns[0])).toEqual(['A:one two']);
    expect(model.lastSeq).toBe(3);
  });

  it('binds the first turn of a new conversation by its request id only', () => {
    const model = new ConversationModel(null);
    const turn = model.beginTurn('hello', [], 'agent', 5);
    const other = new Frames(T2, 9).started('ffffffff-1111-4222-8333-944455556666');
    expect(model.owns(other)).toBe(false);
    expect(model.applyFrame(other)).toBe(false);
    expect(model.id).toBeNull();
    const mine = new Frames(T1, 5);
    mine.seq = 1;
    expect(model.applyFrame(mine.started())).toBe(true);
    expect(model.id).toBe(CONV);
    expect(turn.id).toBe(T1);
  });

  it('ignores frames of other turns and conversations', () => {
    const model = new ConversationModel(CONV);
    model.beginTurn('hi', [], 'agent', 7);
    const f = new Frames(T1);
    model.applyFrame(f.started());
    const stranger = new Frames(T2);
    stranger.seq = 10;
    expect(model.applyFrame(stranger.event({ kind: 'tool.call', tool_call_id: 'x', name: 'n' }))).toBe(false);
    expect(model.applyFrame(stranger.delta('x', 'ffffffff-1111-4222-8333-944455556666'))).toBe(false);
    expect(model.applyFrame({ type: 'event', seq: 20, payload: { kind: 'index.progress' } })).toBe(false);
    expect(texts(model.turns[0])).toEqual([]);
  });

  it('a denied approval, a cancelled turn and pending approvals left unanswered', () => {
    const model = new ConversationModel(CONV);
    const turn = model.beginTurn('run it', [], 'agent', 7);
    const f = new Frames(T1);
    [f.started(),
      f.event({ kind: 'tool.call', tool_call_id: 'c1', name: 'execute_code' }),
      f.event({ kind: 'tool.call', tool_call_id: 'c2', name: 'write_file' }),
      f.event({ kind: 'approval.request', approval_id: 'ap-1', tool_call_id: 'c1',
        name: 'execute_code', arguments: { code: 'import os; os.system("rm -rf /")' },
        arguments_hash: 'a'.repeat(64), reason: 'execute asks', risks: ['os.system'] }),
      f.event({ kind: 'approval.request', approval_id: 'ap-2', tool_call_id: 'c2',
        name: 'write_file', arguments: { path: 'y', content: '' },
        arguments_hash: 'b'.repeat(64), reason: 'writes ask', risks: [] })
    ].forEach(fr => model.applyFrame(fr));
    expect(tool(turn, 'c1').approval?.risks).toEqual(['os.system']);
    model.markDecision('ap-1', 'deny');
    expect(tool(turn, 'c1').state).toBe('denied');
    model.applyFrame(f.event({ kind: 'tool.result', tool_call_id: 'c1', name: 'execute_code',
      ok: false, denied: true, content: 'the user or the policy did not allow execute_code' }));
    expect(tool(turn, 'c1').state).toBe('denied');
    expect(tool(turn, 'c1').edits).toBe(false);
    model.applyFrame(f.event({ kind: 'turn.error', status: 'cancelled',
      message: 'the turn was cancelled' }));
    expect(turn.status).toBe('cancelled');
    expect(tool(turn, 'c2').state).toBe('denied'); // cancelling denies what was pending
    expect(texts(turn).pop()).toBe('E:cancelled');
    // the response repeats the end: no second error
    model.finishTurn({ conversation_id: CONV, turn_id: T1, status: 'cancelled',
      error: 'the turn was cancelled' });
    expect(turn.items.filter(i => i.type === 'error').length).toBe(1);
    expect(model.canUndo(turn)).toBe(false);
  });

  it('a refused decision is shown on the card and can be retried', () => {
    const model = new ConversationModel(CONV);
    const turn = model.beginTurn('x', [], 'agent', 7);
    const f = new Frames(T1);
    [f.started(), f.event({ kind: 'approval.request', approval_id: 'ap-1', tool_call_id: 'c1',
      name: 'write_file', arguments: {}, arguments_hash: 'a'.repeat(64), reason: '', risks: [] })]
      .forEach(fr => model.applyFrame(fr));
    model.markDecision('ap-1', 'always');
    model.decisionFailed('ap-1', new CloudIDEError('not reachable', { status: 0,
      code: 'connection_lost' }));
    expect(tool(turn, 'c1').state).toBe('awaiting_approval');
    expect(tool(turn, 'c1').approvalError).toMatch(/connection/i);
    model.markDecision('ap-1', 'allow');
    model.decisionFailed('ap-1', new CloudIDEError('this approval is no longer pending',
      { status: 409 }));
    expect(tool(turn, 'c1').state).toBe('approved'); // a conflict: the result will tell
    expect(tool(turn, 'c1').approvalError).toMatch(/no longer pending/);
  });

  it('fallbacks, retries, summaries and errors become notices and explained errors', () => {
    const model = new ConversationModel(CONV);
    const turn = model.beginTurn('x', [], 'agent', 7);
    const f = new Frames(T1);
    [f.started(),
      f.event({ kind: 'history.summarized', turns: 4, model: 'm1' }),
      f.event({ kind: 'model.fallback', model: 'm2', reason: 'balanced strategy rank 2',
        after: 'rate_limited' }),
      f.event({ kind: 'model.retry', after: 'server', wait_s: 2 }),
      f.event({ kind: 'turn.error', status: 'error',
        message: 'model error (overloaded): upstream overloaded' })
    ].forEach(fr => model.applyFrame(fr));
    expect(texts(turn)).toEqual(['N:summary', 'N:fallback', 'N:retry', 'E:model_error']);
    const error = turn.items[3];
    expect(error.type === 'error' && error.explanation.detail).toBe('upstream overloaded');
    // a late frame keeps the error last
    model.applyFrame(f.event({ kind: 'turn.usage', model: 'm2', input_tokens: 1,
      output_tokens: 0, cost: 0 }));
    model.applyFrame(f.event({ kind: 'model.fallback', model: 'm3' }));
    expect(texts(turn).pop()).toBe('E:model_error');
  });

  it('a refused chat.send explains itself (rate limit with its retry time)', () => {
    const model = new ConversationModel(CONV);
    const turn = model.beginTurn('x', [], 'agent', 7);
    model.failTurn(turn, new CloudIDEError('slow down', { status: 429, code: 'rate_limited',
      retryAfter: 12 }));
    expect(turn.status).toBe('error');
    const error = turn.items[0];
    expect(error.type).toBe('error');
    if (error.type === 'error') {
      expect(error.explanation.kind).toBe('rate_limited');
      expect(error.explanation.action).toContain('12 seconds');
    }
    expect(model.activeTurn).toBeNull();
  });

  it('a lost connection leaves a started turn incomplete, until its end comes', () => {
    const model = new ConversationModel(CONV);
    const turn = model.beginTurn('x', [], 'agent', 7);
    model.applyFrame(new Frames(T1).started());
    model.failTurn(turn, new CloudIDEError('lost', { status: 0, code: 'connection_lost' }));
    expect(turn.status).toBe('incomplete');
    expect(texts(turn)).toEqual(['E:connection']);
    model.finishTurn({ conversation_id: CONV, turn_id: T1, status: 'ok' });
    expect(turn.status).toBe('ok');
    expect(texts(turn)).toEqual([]);
  });
});

/** A stored conversation as GET cloudide/api/conversations/<id> returns it. */
function stored(): IConversationDetail {
  return {
    id: CONV, title: 'Fix x', created_at: '2024-01-01T00:00:00', updated_at: '2024-01-01T00:01:00',
    messages: [
      { turn_id: T1, role: 'user', content: { text: 'fix x',
        context: [{ kind: 'cell', path: 'nb.ipynb', cell_id: 'c1' }], task: 'fix' } },
      { turn_id: T1, role: 'summary', content: { text: 'earlier', through_turn: 'z', turns: 3 } },
      { turn_id: T1, role: 'assistant', content: { text: 'Editing.', model: 'm1',
        model_reason: 'default model', tool_calls: [
          { id: 'c1', type: 'function', function: { name: 'edit_file',
            arguments: '{"path": "x.py", "old_string": "a", "new_string": "b"}' } },
          { id: 'c2', type: 'function', function: { name: 'write_file', arguments: '{bad json' } }
        ] } },
      { turn_id: T1, role: 'tool', content: { tool_call_id: 'c1', name: 'edit_file', ok: true,
        content: 'Updated', checkpoints: [{ path: 'x.py', kind: 'file', previous: 'a' }] } },
      { turn_id: T1, role: 'assistant', content: { text: 'Done.', tool_calls: [], model: 'm1' } },
      { turn_id: T1, role: 'undo', content: { restored: [{ path: 'x.py', action: 'restored' }] } },
      { turn_id: T2, role: 'user', content: { text: 'again', context: [], task: 'agent' } },
      { turn_id: T2, role: 'error', content: { status: 'limit',
        message: 'stopped after 20 steps (the step limit)' } }
    ]
  };
}

describe('ConversationModel: stored conversations', () => {
  it('loads user, assistant, tool, summary, undo and error messages', () => {
    const model = new ConversationModel(CONV);
    model.load(stored());
    expect(model.title).toBe('Fix x');
    const [first, second] = model.turns;
    expect(first.user).toEqual({ text: 'fix x', task: 'fix',
      context: [{ kind: 'cell', path: 'nb.ipynb', cell_id: 'c1' }] });
    expect(texts(first)).toEqual(['N:summary', 'A:Editing.', 'T:edit_file:done',
      'T:write_file:failed', 'A:Done.', 'N:undo']);
    expect(first.status).toBe('ok');
    expect(first.undone).toBe(true);
    expect(model.canUndo(first)).toBe(false); // already undone
    const edit = tool(first, 'c1');
    expect(edit.arguments).toEqual({ path: 'x.py', old_string: 'a', new_string: 'b' });
    expect(edit.edits).toBe(true);
    const broken = tool(first, 'c2');
    expect([broken.arguments, broken.argumentsText]).toEqual([null, '{bad json']);
    expect(broken.result).toMatch(/not run/i);
    expect(second.status).toBe('limit');
    expect(texts(second)).toEqual(['E:limit']);
    expect(model.activeTurn).toBeNull();
  });

  it('a stored turn without an end is incomplete', () => {
    const model = new ConversationModel(CONV);
    model.load({ ...stored(), messages: stored().messages.slice(0, 4) });
    expect(model.turns[0].status).toBe('incomplete');
    expect(model.turns[0].items[0].type).toBe('notice');
  });

  it('undo is offered only for ended turns with recorded edits', () => {
    const model = new ConversationModel(CONV);
    const messages = stored().messages.filter(m => m.role !== 'undo');
    model.load({ ...stored(), messages });
    expect(model.canUndo(model.turns[0])).toBe(true);
    expect(model.canUndo(model.turns[1])).toBe(false);
    model.markUndone(model.turns[0], 1);
    expect(model.canUndo(model.turns[0])).toBe(false);
  });
});

describe('ConversationModel: reload in the middle of a turn', () => {
  /** The stored state of turn T1 while it runs: the user message and the first step. */
  function runningDetail(): IConversationDetail {
    return {
      id: CONV, title: 'Fix x', created_at: '', updated_at: '',
      messages: [
        { turn_id: T1, role: 'user', content: { text: 'fix x', context: [], task: 'agent' } },
        { turn_id: T1, role: 'assistant', content: { text: 'Let me fix it.', model: 'm1',
          tool_calls: [{ id: 'c1', type: 'function',
            function: { name: 'edit_file', arguments: '{}' } }] } }
      ]
    };
  }

  it('replayed frames rebuild the turn exactly once, whatever loads first', () => {
    const f = new Frames(T1, 3);
    const frames = fullTurn(f).slice(0, 8); // up to the approval request
    for (const restFirst of [true, false]) {
      const model = new ConversationModel(CONV);
      model.restoreRunningTurn(T1, { text: 'fix x', context: [], task: 'agent' });
      if (restFirst) {
        model.load(runningDetail());
      }
      frames.forEach(fr => model.applyFrame({ ...fr, replayed: true }));
      frames.forEach(fr => model.applyFrame({ ...fr, replayed: true })); // and again
      if (!restFirst) {
        model.load(runningDetail());
      }
      expect(model.turns.length).toBe(1);
      const turn = model.turns[0];
      expect(turn.status).toBe('running');
      expect(texts(turn)).toEqual(['A:Let me fix it.', 'T:edit_file:awaiting_approval']);
      expect(turn.user?.text).toBe('fix x');
      expect(turn.usage?.calls).toBe(1);
      // the turn goes on live
      model.applyFrame(f.event({ kind: 'tool.result', tool_call_id: 'c1', name: 'edit_file',
        ok: true, content: 'ok', data: { diff: DIFF, path: 'x.py' } }));
      expect(tool(turn, 'c1').state).toBe('done');
    }
  });

  it('when the replay lost the start, the stored steps stay and later frames add to them', () => {
    const model = new ConversationModel(CONV);
    model.restoreRunningTurn(T1, { text: 'fix x', context: [], task: 'agent' });
    model.load(runningDetail());
    const turn = model.turns[0];
    expect(turn.status).toBe('running');
    expect(texts(turn)).toEqual(['A:Let me fix it.', 'T:edit_file:running']);
    const f = new Frames(T1);
    f.seq = 40;
    model.applyFrame(f.event({ kind: 'tool.result', tool_call_id: 'c1', name: 'edit_file',
      ok: true, content: 'ok', data: { diff: DIFF } }));
    model.applyFrame(f.event({ kind: 'model.call', model: 'm1', step: 2 }));
    model.applyFrame(f.delta('Done.'));
    expect(texts(turn)).toEqual(['A:Let me fix it.', 'T:edit_file:done', 'A:Done.']);
    // the end comes as a response to a request of the page before the reload
    model.finishTurn({ conversation_id: CONV, turn_id: T1, status: 'ok' });
    expect(turn.status).toBe('ok');
  });
  it('a turn whose end was missed takes the stored end when the conversation reloads', () => {
    const model = new ConversationModel(CONV);
    const turn = model.beginTurn('fix x', [], 'agent', 7);
    const f = new Frames(T1);
    [f.started(), f.delta('Let me fix it.'),
      f.event({ kind: 'turn.usage', model: 'm1', input_tokens: 5, output_tokens: 1, cost: 0.1 })]
      .forEach(fr => model.applyFrame(fr));
    model.failTurn(turn, new CloudIDEError('lost', { status: 0, code: 'connection_lost' }));
    expect(model.turns[0].status).toBe('incomplete');
    model.load({ ...runningDetail(), messages: [...runningDetail().messages,
      { turn_id: T1, role: 'error', content: { status: 'error',
        message: 'model error (server): boom' } }] });
    const reloaded = model.turnById(T1)!;
    expect(reloaded.status).toBe('error');
    expect(reloaded.usage?.cost).toBe(0.1); // usage is not stored: the live count stays
    expect(texts(reloaded)).toEqual(['A:Let me fix it.', 'T:edit_file:failed', 'E:model_error']);
  });
});
