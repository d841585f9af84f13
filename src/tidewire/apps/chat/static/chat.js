// The chat UI: plain DOM, user content only ever set through textContent.
import { TidewireClient } from "/tidewire.js";

const $ = (id) => document.getElementById(id);
const TYPING_SHOWN_MS = 5000;
const TYPING_SEND_EVERY_MS = 2000;
const TYPING_IDLE_MS = 3000;

/** @type {TidewireClient | null} */
let client = null;
let me = "";
let current = "";
/** Per room: messages (by id), members, typing users -> timer. */
const rooms = new Map();

function room(name) {
  if (!rooms.has(name)) {
    rooms.set(name, { messages: new Map(), members: new Set(), typing: new Map(), items: [] });
  }
  return rooms.get(name);
}

function clientKey() {
  let key = localStorage.getItem("tidewire-chat-key");
  if (!key) {
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    key = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
    localStorage.setItem("tidewire-chat-key", key);
  }
  return key;
}

function wsUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws`;
}

function clockTime(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

// ------------------------------------------------------------------ rendering

function renderRooms() {
  const nav = $("rooms");
  nav.replaceChildren();
  for (const name of rooms.keys()) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = `#${name}`;
    button.dataset.room = name;
    if (name === current) button.className = "active";
    button.addEventListener("click", () => show(name));
    nav.append(button);
  }
}

function messageItem(message) {
  const li = document.createElement("li");
  li.className = "message";
  li.dataset.id = String(message.id);
  const time = document.createElement("time");
  time.dateTime = new Date(message.ts * 1000).toISOString();
  time.textContent = clockTime(message.ts);
  const author = document.createElement("span");
  author.className = "author";
  author.textContent = message.user;
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = message.text;
  li.append(time, author, text);
  return li;
}

function noticeItem(text) {
  const li = document.createElement("li");
  li.className = "notice";
  li.textContent = text;
  return li;
}

function renderMessages() {
  const list = $("messages");
  const state = room(current);
  list.replaceChildren(...state.items.map((item) => (item.notice ? noticeItem(item.notice) : messageItem(item))));
  list.scrollTop = list.scrollHeight;
}

function renderUsers() {
  const state = room(current);
  const list = $("users");
  list.replaceChildren();
  for (const name of [...state.members].sort()) {
    const li = document.createElement("li");
    li.textContent = name === me ? `${name} (you)` : name;
    list.append(li);
  }
  $("count").textContent = `(${state.members.size})`;
}

function renderTyping() {
  const names = [...room(current).typing.keys()].sort();
  let text = "";
  if (names.length === 1) text = `${names[0]} is typing…`;
  else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
  else if (names.length > 2) text = `${names.length} people are typing…`;
  $("typing").textContent = text;
}

function show(name) {
  current = name;
  renderRooms();
  renderMessages();
  renderUsers();
  renderTyping();
  $("text").focus();
}

function addItem(name, item) {
  const state = room(name);
  if (item.id !== undefined) {
    if (state.messages.has(item.id)) return;
    state.messages.set(item.id, item);
  }
  state.items.push(item);
  if (state.items.length > 500) state.items.splice(0, state.items.length - 500);
  if (name === current) renderMessages();
}

function stopTyping(name, user) {
  const state = room(name);
  const timer = state.typing.get(user);
  if (timer !== undefined) clearTimeout(timer);
  if (state.typing.delete(user) && name === current) renderTyping();
}

// ------------------------------------------------------------------- messages

function handle(message) {
  switch (message.type) {
    case "joined": {
      const state = room(message.room);
      state.members = new Set(message.members);
      if (message.room === current) renderUsers();
      renderRooms();
      break;
    }
    case "history": {
      for (const item of message.messages) addItem(message.room, item);
      break;
    }
    case "chat": {
      stopTyping(message.room, message.user);
      addItem(message.room, message);
      break;
    }
    case "userJoined": {
      room(message.room).members.add(message.user);
      addItem(message.room, { notice: `${message.user} joined` });
      if (message.room === current) renderUsers();
      break;
    }
    case "userLeft": {
      room(message.room).members.delete(message.user);
      stopTyping(message.room, message.user);
      addItem(message.room, { notice: `${message.user} left` });
      if (message.room === current) renderUsers();
      break;
    }
    case "typing": {
      if (!message.typing) {
        stopTyping(message.room, message.user);
        break;
      }
      const state = room(message.room);
      clearTimeout(state.typing.get(message.user));
      state.typing.set(message.user, setTimeout(() => stopTyping(message.room, message.user), TYPING_SHOWN_MS));
      if (message.room === current) renderTyping();
      break;
    }
    case "error": {
      $("error").textContent = message.message;
      setTimeout(() => { $("error").textContent = ""; }, 5000);
      break;
    }
    default:
  }
}

function setStatus(state) {
  const status = $("status");
  status.dataset.state = state;
  if (state === "open") {
    status.hidden = true;
    status.textContent = "";
  } else {
    status.hidden = false;
    status.textContent = state === "closed" ? "Disconnected." : "Reconnecting…";
  }
}

// ----------------------------------------------------------------------- typing

let lastTypingSent = 0;
let idleTimer = 0;

function typed() {
  if (!client || !current) return;
  const now = Date.now();
  if (now - lastTypingSent > TYPING_SEND_EVERY_MS) {
    lastTypingSent = now;
    trySend({ type: "typing", room: current, typing: true });
  }
  clearTimeout(idleTimer);
  idleTimer = setTimeout(() => {
    lastTypingSent = 0;
    trySend({ type: "typing", room: current, typing: false });
  }, TYPING_IDLE_MS);
}

function trySend(envelope) {
  try {
    client.send(envelope);
    return true;
  } catch (error) {
    $("error").textContent = error.message;
    return false;
  }
}

// ------------------------------------------------------------------------ setup

async function joinRoom(name) {
  room(name);
  try {
    await client.join(name);
  } catch (error) {
    rooms.delete(name);
    $("error").textContent = error.message;
    return false;
  }
  show(name);
  return true;
}

async function enter(event) {
  event.preventDefault();
  const username = $("username").value.trim();
  const first = $("room").value.trim();
  $("login-error").textContent = "";
  $("enter").disabled = true;
  localStorage.setItem("tidewire-chat-name", username);
  client = new TidewireClient(wsUrl(), { token: `${username}:${clientKey()}` });
  client.on("message", handle);
  client.on("state", (value) => setStatus(typeof value === "string" ? value : value && value.state));
  try {
    await client.connect();
  } catch (error) {
    $("login-error").textContent = (error && error.message) || "could not connect";
    $("enter").disabled = false;
    client.close();
    client = null;
    return;
  }
  me = username;
  $("me").textContent = username;
  $("login").hidden = true;
  $("chat").hidden = false;
  setStatus("open");
  if (!(await joinRoom(first))) show(first);
}

function init() {
  $("username").value = localStorage.getItem("tidewire-chat-name") || "";
  $("login-form").addEventListener("submit", enter);
  $("send-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("text");
    const text = input.value.trim();
    if (!text || !current) return;
    if (trySend({ type: "chat", room: current, text })) {
      input.value = "";
      clearTimeout(idleTimer);
      lastTypingSent = 0;
      trySend({ type: "typing", room: current, typing: false });
    }
  });
  $("text").addEventListener("input", typed);
  $("join-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = $("new-room");
    const name = input.value.trim();
    if (!name) return;
    input.value = "";
    if (rooms.has(name)) show(name);
    else await joinRoom(name);
  });
}

init();
