// shimgate console: copy buttons, and the invitation page waiting for its device.
// Loaded from /static (the Content-Security-Policy allows no inline script).
'use strict';

function copyButtons() {
  for (const button of document.querySelectorAll('button[data-copy]')) {
    button.addEventListener('click', async () => {
      const source = document.getElementById(button.dataset.copy);
      if (!source) return;
      try {
        await navigator.clipboard.writeText(source.textContent.trim());
        button.textContent = 'Copied';
      } catch (e) {
        // No clipboard (plain HTTP on another host): select the text for a manual copy.
        const range = document.createRange();
        range.selectNodeContents(source);
        const selection = window.getSelection();
        selection.removeAllRanges();
        selection.addRange(range);
      }
    });
  }
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function watchEnrollment(box) {
  const key = box.dataset.key;
  for (;;) {
    try {
      const reply = await fetch('/invite/status', {
        method: 'POST',
        headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
        body: 'key=' + encodeURIComponent(key),
        credentials: 'same-origin',
      });
      if (reply.status === 404) return; // the key expired: nothing more to wait for
      if (reply.ok) {
        const status = await reply.json();
        if (status.enrolled) {
          document.getElementById('enrolled-name').textContent = status.device_name;
          document.getElementById('enrolled-vpn-name').textContent = status.vpn_name;
          document.getElementById('enrolled-vpn-ip').textContent = status.vpn_ip;
          document.getElementById('waiting').textContent = status.awaiting_approval
            ? 'The device has enrolled. An administrator must approve it before it can connect.'
            : 'The device has enrolled.';
          document.getElementById('enrolled').hidden = false;
          return;
        }
      }
    } catch (e) {
      // The gateway restarted or the network blinked: keep trying.
    }
    await sleep(1500);
  }
}

// The devices page: refresh each device's state, last-seen time and gateway every few seconds.
// (Buttons follow on the next page load; text only is written, never markup.)
async function refreshDevices(table) {
  for (;;) {
    await sleep(3000);
    try {
      const reply = await fetch('/devices/state', { credentials: 'same-origin' });
      if (!reply.ok) continue;
      const states = new Map((await reply.json()).map((d) => [d.name, d]));
      for (const row of table.querySelectorAll('tr[data-device]')) {
        const d = states.get(row.dataset.device);
        if (!d) continue;
        const cell = row.querySelector('.state');
        if (cell && cell.textContent !== d.state) {
          cell.textContent = d.state;
          cell.className = 'state ' + (d.state === 'online' ? 'good' : d.state === 'offline' ? '' : 'bad');
        }
        const seen = row.querySelector('.last-seen');
        if (seen) seen.textContent = d.last_seen;
        const gateway = row.querySelector('.gateway');
        if (gateway) gateway.textContent = d.gateway;
      }
    } catch (e) {
      // Keep the page as it is until the gateway answers again.
    }
  }
}

document.addEventListener('DOMContentLoaded', () => {
  copyButtons();
  const devices = document.getElementById('devices');
  if (devices) refreshDevices(devices);
  const box = document.getElementById('watch');
  if (box) watchEnrollment(box);
});
