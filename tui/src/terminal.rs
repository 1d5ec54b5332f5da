//! The terminal, entered and restored in one place: raw mode, the alternate screen and bracketed paste on
//! the way in; the reverse on the way out, whether the app quits, fails, or panics (the panic hook restores
//! the screen first so that the panic message is readable).

use std::io::{Stdout, stdout};
use std::sync::Once;

use anyhow::Context;
use crossterm::event::{DisableBracketedPaste, EnableBracketedPaste};
use crossterm::execute;
use crossterm::terminal::{
    EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode,
};
use ratatui::backend::{Backend, CrosstermBackend};
use ratatui::layout::Rect;

use crate::app::App;

pub struct Terminal {
    inner: ratatui::Terminal<CrosstermBackend<Stdout>>,
    active: bool,
}

/// Puts the terminal back as it was. Safe to call more than once and from the panic hook.
fn restore() {
    let _ = disable_raw_mode();
    let _ = execute!(
        stdout(),
        DisableBracketedPaste,
        LeaveAlternateScreen,
        crossterm::cursor::Show
    );
}

fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            tracing::error!(%info, "panic");
            previous(info);
        }));
    });
}

impl Terminal {
    pub fn enter() -> anyhow::Result<Terminal> {
        install_panic_hook();
        enable_raw_mode().context("switching the terminal to raw mode")?;
        if let Err(e) = execute!(stdout(), EnterAlternateScreen, EnableBracketedPaste) {
            restore();
            return Err(e).context("entering the alternate screen");
        }
        let inner = match ratatui::Terminal::new(CrosstermBackend::new(stdout())) {
            Ok(t) => t,
            Err(e) => {
                restore();
                return Err(e).context("setting up the terminal");
            }
        };
        Ok(Terminal {
            inner,
            active: true,
        })
    }

    pub fn size(&self) -> anyhow::Result<(u16, u16)> {
        let s = self.inner.size().context("reading the terminal size")?;
        Ok((s.width, s.height))
    }

    pub fn draw(&mut self, app: &App) -> anyhow::Result<()> {
        self.draw_with(|f| crate::ui::render(app, f))
    }

    /// Draws any screen (the control pane has its own).
    pub fn draw_with(&mut self, render: impl FnOnce(&mut ratatui::Frame)) -> anyhow::Result<()> {
        self.inner.draw(render).context("drawing")?;
        Ok(())
    }

    /// Ctrl-L: forget what is on screen so the next draw repaints every cell.
    pub fn clear(&mut self) -> anyhow::Result<()> {
        clear_all(&mut self.inner).context("clearing the screen")
    }

    pub fn leave(mut self) -> anyhow::Result<()> {
        self.active = false;
        disable_raw_mode().context("leaving raw mode")?;
        execute!(
            self.inner.backend_mut(),
            DisableBracketedPaste,
            LeaveAlternateScreen
        )
        .context("leaving the alternate screen")?;
        self.inner.show_cursor().context("showing the cursor")?;
        Ok(())
    }
}

/// Clears the whole screen and ratatui's buffers without asking the terminal anything. ratatui's own
/// `Terminal::clear` queries the cursor position, which means reading the terminal's answer from standard
/// input, where the input thread is already reading: the answer is lost and the query fails after a few
/// seconds ("The cursor position could not be read within a normal duration"). A full-screen `resize` to
/// the current size writes Clear(All) and resets the back buffer, so the next draw repaints every cell.
fn clear_all<B: Backend>(t: &mut ratatui::Terminal<B>) -> Result<(), B::Error> {
    let size = t.size()?;
    t.resize(Rect::new(0, 0, size.width, size.height))
}

/// Reads terminal input on a thread of its own (crossterm's reader blocks); the thread dies with the
/// process.
pub fn input_events()
-> anyhow::Result<tokio::sync::mpsc::UnboundedReceiver<crossterm::event::Event>> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("terminal-input".into())
        .spawn(move || {
            while let Ok(ev) = crossterm::event::read() {
                if tx.send(ev).is_err() {
                    break;
                }
            }
        })
        .context("starting the input thread")?;
    Ok(rx)
}

/// SIGTERM and SIGHUP (the terminal or tmux pane closing) end the program the way quitting does, so that
/// the servers it started are stopped cleanly rather than left to the kernel's parent-death signal.
pub struct QuitSignals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hup: tokio::signal::unix::Signal,
}

impl QuitSignals {
    /// Must be called inside the tokio runtime.
    pub fn new() -> anyhow::Result<QuitSignals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(QuitSignals {
                term: signal(SignalKind::terminate()).context("watching SIGTERM")?,
                hup: signal(SignalKind::hangup()).context("watching SIGHUP")?,
            })
        }
        #[cfg(not(unix))]
        Ok(QuitSignals {})
    }

    /// Resolves when one arrives; never elsewhere.
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.hup.recv() => {}
        }
        #[cfg(not(unix))]
        std::future::pending::<()>().await
    }
}

impl Drop for Terminal {
    /// On an early return with `?` the terminal is restored too.
    fn drop(&mut self) {
        if self.active {
            restore();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use ratatui::backend::{ClearType, TestBackend, WindowSize};
    use ratatui::buffer::Cell;
    use ratatui::layout::{Position, Size};

    use super::*;

    /// A backend that cannot tell where the cursor is, like crossterm's while another thread reads the
    /// input: any query fails the test.
    struct NoCursorQueries {
        inner: TestBackend,
        clears: usize,
    }

    fn ok<T>(r: Result<T, std::convert::Infallible>) -> io::Result<T> {
        let Ok(v) = r;
        Ok(v)
    }

    impl Backend for NoCursorQueries {
        type Error = io::Error;
        fn draw<'a, I>(&mut self, content: I) -> io::Result<()>
        where
            I: Iterator<Item = (u16, u16, &'a Cell)>,
        {
            ok(self.inner.draw(content))
        }
        fn hide_cursor(&mut self) -> io::Result<()> {
            ok(self.inner.hide_cursor())
        }
        fn show_cursor(&mut self) -> io::Result<()> {
            ok(self.inner.show_cursor())
        }
        fn get_cursor_position(&mut self) -> io::Result<Position> {
            Err(io::Error::other(
                "The cursor position could not be read within a normal duration",
            ))
        }
        fn set_cursor_position<P: Into<Position>>(&mut self, position: P) -> io::Result<()> {
            ok(self.inner.set_cursor_position(position))
        }
        fn clear(&mut self) -> io::Result<()> {
            self.clears += 1;
            ok(self.inner.clear())
        }
        fn clear_region(&mut self, clear_type: ClearType) -> io::Result<()> {
            if clear_type == ClearType::All {
                self.clears += 1;
            }
            ok(self.inner.clear_region(clear_type))
        }
        fn size(&self) -> io::Result<Size> {
            ok(self.inner.size())
        }
        fn window_size(&mut self) -> io::Result<WindowSize> {
            ok(self.inner.window_size())
        }
        fn flush(&mut self) -> io::Result<()> {
            ok(self.inner.flush())
        }
    }

    #[test]
    fn ctrl_l_and_drawing_never_ask_where_the_cursor_is() {
        let backend = NoCursorQueries {
            inner: TestBackend::new(80, 24),
            clears: 0,
        };
        let mut t = ratatui::Terminal::new(backend).unwrap();
        let mut app = App::new(vec!["127.0.0.1:7001".into()], Some("alice".into()), 0, 0);
        app.update(crate::app::Action::Resize(80, 24));
        t.draw(|f| crate::ui::render(&app, f)).unwrap();
        // Something drawn over the screen behind ratatui's back (what Ctrl-L is for).
        t.backend_mut().inner.clear().unwrap();
        clear_all(&mut t).unwrap();
        assert!(t.backend().clears >= 1, "the screen is cleared");
        t.draw(|f| crate::ui::render(&app, f)).unwrap();
        let shown = t.backend().inner.to_string();
        assert!(
            shown.contains("Sign in"),
            "everything is drawn again:\n{shown}"
        );
    }
}
