//! One client channel relayed to one upstream channel, both ways, each
//! direction in its own loop so neither can block the other.
//!
//! Flow control: each loop writes with the channel's window-aware writer,
//! so a slow receiver stops that loop; it then stops reading its source,
//! whose bounded queue (`channel_buffer_size` messages) fills and holds
//! back that SSH connection's reader: TCP backpressure, never an unbounded
//! buffer. Requests (exec, subsystem, pty, env, signal, window change) pass
//! upstream in order; the backend's replies, exit status and signals come
//! back the same way. pty-req, shell, exec and subsystem go up asking for a
//! reply, which is relayed back (russh drops it if the client had not asked).

use russh::server::Handle as ServerHandle;
use russh::{client, server, Channel, ChannelMsg, ChannelWriteHalf};

use super::SshMetrics;

pub async fn relay(
    client_side: Channel<server::Msg>,
    upstream: Channel<client::Msg>,
    handle: ServerHandle,
    metrics: SshMetrics,
) {
    let id = client_side.id();
    let (mut from_client, to_client) = client_side.split();
    let (mut from_backend, to_backend) = upstream.split();
    let up = async {
        let bytes = metrics.bytes.with_label_values(&["to_backend"]);
        while let Some(msg) = from_client.wait().await {
            let len = match &msg {
                ChannelMsg::Data { data } | ChannelMsg::ExtendedData { data, .. } => data.len() as u64,
                _ => 0,
            };
            let close = matches!(msg, ChannelMsg::Close);
            if forward_up(msg, &to_backend).await.is_err() || close {
                break;
            }
            bytes.inc_by(len);
        }
        let _ = to_backend.eof().await;
        let _ = to_backend.close().await;
    };
    let down = async {
        let bytes = metrics.bytes.with_label_values(&["to_client"]);
        while let Some(msg) = from_backend.wait().await {
            let sent = match msg {
                ChannelMsg::Data { data } => {
                    let len = data.len() as u64;
                    let r = to_client.data_bytes(data).await.map_err(drop);
                    bytes.inc_by(len);
                    r
                }
                ChannelMsg::ExtendedData { data, ext } => {
                    let len = data.len() as u64;
                    let r = to_client.extended_data_bytes(ext, data).await.map_err(drop);
                    bytes.inc_by(len);
                    r
                }
                ChannelMsg::Eof => to_client.eof().await.map_err(drop),
                ChannelMsg::ExitStatus { exit_status } => to_client.exit_status(exit_status).await.map_err(drop),
                ChannelMsg::ExitSignal { signal_name, core_dumped, error_message, lang_tag } => {
                    handle.exit_signal_request(id, signal_name, core_dumped, error_message, lang_tag).await
                }
                ChannelMsg::Success => handle.channel_success(id).await,
                ChannelMsg::Failure => handle.channel_failure(id).await,
                ChannelMsg::Close => break,
                _ => Ok(()),
            };
            if sent.is_err() {
                break;
            }
        }
        let _ = to_client.close().await;
    };
    tokio::join!(up, down);
}

/// Passes one client message to the upstream channel.
async fn forward_up(msg: ChannelMsg, to: &ChannelWriteHalf<client::Msg>) -> Result<(), russh::Error> {
    match msg {
        ChannelMsg::Data { data } => to.data_bytes(data).await,
        ChannelMsg::ExtendedData { data, ext } => to.extended_data_bytes(ext, data).await,
        ChannelMsg::Eof => to.eof().await,
        ChannelMsg::Close => Ok(()),
        ChannelMsg::RequestPty { want_reply, term, col_width, row_height, pix_width, pix_height, terminal_modes } => {
            to.request_pty(want_reply, &term, col_width, row_height, pix_width, pix_height, &terminal_modes).await
        }
        ChannelMsg::RequestShell { want_reply } => to.request_shell(want_reply).await,
        ChannelMsg::Exec { want_reply, command } => to.exec(want_reply, command).await,
        ChannelMsg::RequestSubsystem { want_reply, name } => to.request_subsystem(want_reply, name).await,
        // russh reports every request as wanting a reply, and answers only
        // the latest one that did. Clients send env without asking for a
        // reply (OpenSSH's SendEnv): a backend's refusal relayed here would
        // be read as the answer to the exec that follows. So env goes up
        // without asking; window-change and signal never get replies.
        ChannelMsg::SetEnv { variable_name, variable_value, .. } => {
            to.set_env(false, variable_name, variable_value).await
        }
        ChannelMsg::WindowChange { col_width, row_height, pix_width, pix_height } => {
            to.window_change(col_width, row_height, pix_width, pix_height).await
        }
        ChannelMsg::Signal { signal } => to.signal(signal).await,
        _ => Ok(()),
    }
}
