/**
 * The chat's REST calls, through the extension's one request helper (`requestAPI`).
 */

import { requestAPI } from '../request';
import type { IChatApi } from './controller';
import type { IConversationDetail, IConversationInfo, IModelList } from './types';

/** Conversation ids are UUIDs; anything else is never put into a URL. */
const CONVERSATION_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

function conversationPath(id: string): string {
  if (!CONVERSATION_ID.test(id)) {
    throw new Error(`not a conversation id: ${id.slice(0, 60)}`);
  }
  return `conversations/${id}`;
}

export const restChatApi: IChatApi = {
  async listConversations(): Promise<IConversationInfo[]> {
    const body = await requestAPI<{ conversations?: IConversationInfo[] }>('conversations?limit=100');
    return Array.isArray(body?.conversations) ? body.conversations : [];
  },

  getConversation(id: string): Promise<IConversationDetail> {
    return requestAPI<IConversationDetail>(conversationPath(id));
  },

  renameConversation(id: string, title: string): Promise<IConversationInfo> {
    return requestAPI<IConversationInfo>(conversationPath(id), {
      method: 'PATCH',
      body: JSON.stringify({ title })
    });
  },

  async deleteConversation(id: string): Promise<void> {
    await requestAPI<void>(conversationPath(id), { method: 'DELETE' });
  },

  listModels(): Promise<IModelList> {
    return requestAPI<IModelList>('models');
  }
};
