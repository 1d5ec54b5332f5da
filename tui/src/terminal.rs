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
use ratatui::backend::CrosstermBackend;

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
        self.inner
            .draw(|f| crate::ui::render(app, f))
            .context("drawing")?;
        Ok(())
    }

    /// Ctrl-L: forget what is on screen so the next draw repaints every cell.
    pub fn clear(&mut self) -> anyhow::Result<()> {
        self.inner.clear().context("clearing the screen")
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

impl Drop for Terminal {
    /// On an early return with `?` the terminal is restored too.
    fn drop(&mut self) {
        if self.active {
            restore();
        }
    }
}
